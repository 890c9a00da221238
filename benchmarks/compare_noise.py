"""How often does `tldeploy compare` flag noise, and how often a real 20% slowdown?

Times one ONNX model (ONNX Runtime, CPU) in `--runs` benchmark runs. In each run, three entries
take turns in rounds, as `tldeploy bench` times them: the model, the model again (a second
session), and a copy doing ~20% more work (the same model on 14% more images per call: measured
ratio printed). Then:
- paired: entries of the same run compared round by round (bench.json#A vs bench.json#B);
- separate: entry A of run i against entry A (identical) or the heavier copy of run j != i,
  the way two separate bench runs are compared.

    .venv/bin/python benchmarks/compare_noise.py demo-run/digits.fp32.ort.onnx --batch 1
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

from tldeploy.bench.compare import compare_latency
from tldeploy.bench.environment import collect_environment
from tldeploy.bench.latency import LatencyConfig, measure_interleaved
from tldeploy.runtime.runners import OrtRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _runners import Heavier  # noqa: E402  (the test suite's slowed runner)


def summary(verdicts) -> dict:
    r = [v.ratio for v in verdicts]
    return {"flagged": int(sum(v.regression for v in verdicts)), "of": len(verdicts),
            "ratio_min": round(min(r), 4), "ratio_median": round(float(np.median(r)), 4), "ratio_max": round(max(r), 4)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("onnx", type=Path)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--share", type=float, default=0.14, help="extra images per call for the heavier copy (batch 1: one more image)")
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--duration", type=float, default=1.5, help="seconds per entry and run")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("-o", "--out", type=Path, default=Path(__file__).parent / "results" / "compare_noise.json")
    a = ap.parse_args()
    cfg = LatencyConfig(warmup_s=0.5, duration_s=a.duration, rounds=a.rounds)
    with OrtRunner(a.onnx) as m, OrtRunner(a.onnx) as m2, OrtRunner(a.onnx) as m3, Heavier(m3, a.share) as slow:
        size = m.input_spec()["images"].shape[-1]
        feed = {"images": np.random.default_rng(0).standard_normal((a.batch, 3, size, size)).astype(np.float32)}
        runs = []
        for i in range(a.runs):
            runs.append(measure_interleaved([(m, feed), (m2, feed), (slow, feed)], cfg))
            print(f"run {i + 1}/{a.runs}: p50 {runs[-1][0].p50:.3f} / {runs[-1][1].p50:.3f} / {runs[-1][2].p50:.3f} ms", file=sys.stderr)

    def v(x, y, paired):
        return compare_latency(x.samples_ms, y.samples_ms, baseline_rounds=x.round_sizes, current_rounds=y.round_sizes, paired=paired)

    others = list(itertools.permutations(range(a.runs), 2))
    result = {
        "model": str(a.onnx), "batch": a.batch, "runs": a.runs, "duration_s": a.duration, "rounds": a.rounds,
        "heavier_work": f"+{a.share:.0%} images per call",
        "paired_identical": summary([v(r[0], r[1], True) for r in runs] + [v(r[1], r[0], True) for r in runs]),
        "paired_heavier": summary([v(r[0], r[2], True) for r in runs]),
        "separate_identical": summary([v(runs[i][0], runs[j][0], False) for i, j in others]),
        "separate_heavier": summary([v(runs[i][0], runs[j][2], False) for i, j in others]),
        "environment": collect_environment(None),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    for k in ("paired_identical", "paired_heavier", "separate_identical", "separate_heavier"):
        s = result[k]
        print(f"{k:20s} flagged {s['flagged']:3d} of {s['of']:3d}   ratio {s['ratio_min']:.3f} .. {s['ratio_median']:.3f} .. {s['ratio_max']:.3f}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
