"""What `tldeploy bench --robustness` costs and finds on the digits EfficientNet-Lite0 (224 px):

    python benchmarks/robustness_cost.py --workdir /tmp/robust    # trains the digits model if needed

- the issue's suite: 8 corruptions x 3 severities on 200 validation images, the ORT FP32 and INT8
  artifacts and the reference, FGSM + PGD at eps 1 and 4 (pixel levels): wall seconds of the
  whole bench run (parity and a token latency included) and its robustness rows;
- the disagreement search alone on --search images at the same budgets: seconds and what it found.
Writes results/robustness_cost.json with the CPU's name and class.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ort_int8_latency import prepare  # noqa: E402

from tldeploy.bench.bench import BenchConfig, run_bench  # noqa: E402
from tldeploy.bench.latency import LatencyConfig  # noqa: E402
from tldeploy.engines.builder import BuildConfig, build  # noqa: E402
from tldeploy.engines.capabilities import PrecisionTarget  # noqa: E402
from tldeploy.runtime.host import cpu_info  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("robustness-bench"))
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--epsilon", default="1,4")
    ap.add_argument("--search", type=int, default=50, help="images for the disagreement search")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "robustness_cost.json")
    args = ap.parse_args()
    data, onnx_path = prepare(args.workdir)
    ckpt = args.workdir / "run" / "model.pt"
    arts = []
    for precision in ("fp32", "int8"):
        path = args.workdir / f"digits.{precision}.ort.onnx"
        if not path.exists():
            build(BuildConfig(onnx_path, PrecisionTarget(precision, "ort"), output=path, calib_data=data / "train" if precision == "int8" else None))
        arts.append(path)
    eps = tuple(float(e) for e in args.epsilon.split(","))
    quick = {"latency": LatencyConfig(warmup=1, iters=5, rounds=1, settle_s=0.0), "batch_sizes": (1,), "time_reference": False,
             "quiet": True, "force": True, "reference": ckpt, "data": data / "val", "epsilons": eps}
    t0 = time.perf_counter()
    suite = run_bench(BenchConfig(tuple(arts), args.workdir / "suite.json", limit=args.images, robustness="all", **quick)).document.to_json()
    suite_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    search = run_bench(BenchConfig(tuple(arts), args.workdir / "search.json", limit=args.search, disagreement=args.search, **quick)).document.to_json()
    search_s = time.perf_counter() - t0
    cpu = cpu_info()
    out = {
        "cpu": cpu.get("name"), "cpu_class": cpu.get("class"), "images": suite["data"]["images"], "epsilons": list(eps),
        "suite_seconds": round(suite_s, 1), "search_images": search["data"]["images"], "search_seconds": round(search_s, 1),
        "suite": {r["name"]: r["robustness"] for r in suite["results"]},
        "search": {r["name"]: r["robustness"]["disagreement"] for r in search["results"] if r["role"] == "artifact"},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"{cpu.get('name')} ({cpu.get('class')}): suite on {out['images']} images {suite_s:.0f} s; "
          f"search on {out['search_images']} images {search_s:.0f} s")
    for name, rows in out["suite"].items():
        flips = {f"{c['corruption']} {c['severity']}": c["flip_rate"] for c in rows["corruptions"] if c["flip_rate"] is not None}
        print(name, "mCE", rows["mce_vs_reference"], "attacks", [(a["method"], a["epsilon"], a["accuracy"]) for a in rows["attacks"]],
              "flips", flips or "")
    for name, per_eps in out["search"].items():
        print(name, "search", [(d["epsilon"], d["searched"], d["found"], d["clean_disagreements"]) for d in per_eps])


if __name__ == "__main__":
    main()
