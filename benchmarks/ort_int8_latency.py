"""ONNX Runtime INT8 vs FP32 on this CPU: batch-1 latency (interleaved, one run) and top-1 accuracy.

    python benchmarks/ort_int8_latency.py --workdir /tmp/int8bench     # trains the digits model if needed

Steps: digits data -> efficientnet_lite0 feature-extract (224 px) -> export -> `tldeploy build` FP32,
the default INT8 (guarded on the validation images) and a fully quantized INT8 (`keep_float=0`, the
speed INT8 reaches on this CPU at any accuracy) for ONNX Runtime CPU -> accuracy on the validation
set and batch-1 latency at each `--threads` count. The artifacts are timed in alternating rounds so
that drifts of a shared machine hit all alike.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from tldeploy.contract import read_contract
from tldeploy.data.folders import find_files, load_image, write_digits
from tldeploy.engines.builder import BuildConfig, build
from tldeploy.engines.capabilities import PrecisionTarget
from tldeploy.engines.quantize import Int8Options
from tldeploy.export.onnx_export import ExportConfig, export_onnx
from tldeploy.runtime.host import cpu_info
from tldeploy.runtime.loader import load_runner
from tldeploy.runtime.runners import run_batches
from tldeploy.train.training import TrainConfig, train


def prepare(workdir: Path) -> tuple[Path, Path]:
    data, onnx_path = workdir / "digits", workdir / "digits.onnx"
    if not data.exists():
        write_digits(data, size=64, val_fraction=0.2, seed=0)
    if not onnx_path.exists():
        run = train(TrainConfig(data=data, out_dir=workdir / "run", epochs=10, quiet=True, force=True))
        export_onnx(ExportConfig(run.checkpoint, onnx_path))
    return data, onnx_path


def interleaved_p50(runners: dict, feed: dict, rounds: int, iters: int, settle_s: float = 0.0) -> dict[str, float]:
    """p50 ms of `runners` (activated) on `feed`, timed in alternating rounds so that drifts of a
    shared machine hit all alike; `settle_s` pauses before each turn."""
    samples: dict[str, list[float]] = {k: [] for k in runners}
    for r in runners.values():
        for _ in range(20):
            r.infer(feed)
    for _ in range(rounds):
        for k, r in runners.items():
            time.sleep(settle_s)
            for _ in range(iters):
                t0 = time.perf_counter()
                r.infer(feed)
                samples[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v) * 1e3) for k, v in samples.items()}


def validation_logits(artifacts: dict[str, Path], x: np.ndarray) -> dict[str, np.ndarray]:
    runners = {k: load_runner(p).activate() for k, p in artifacts.items()}
    logits = {k: run_batches(r, x)["logits"] for k, r in runners.items()}
    for r in runners.values():
        r.deactivate()
    return logits


def latency_by_threads(artifacts: dict[str, Path], x1: np.ndarray, threads: str, rounds: int, iters: int) -> dict:
    """{threads: p50 ms of each artifact on batch `x1` (one interleaved run) and each one's ratio to "fp32"}."""
    latency = {}
    for n in (int(t) for t in threads.split(",")):
        runners = {k: load_runner(p, threads=n).activate() for k, p in artifacts.items()}
        p50 = interleaved_p50(runners, {"images": x1}, rounds, iters)
        for r in runners.values():
            r.deactivate()
        latency[str(n)] = {"p50_ms": p50, **{f"ratio_{k}_to_fp32": p50[k] / p50["fp32"] for k in p50 if k != "fp32"}}
        print(f"{n} thread(s), p50 batch 1: " + ", ".join(f"{k} {v:.2f} ms" for k, v in p50.items())
              + "; to FP32: " + ", ".join(f"{k} {p50[k] / p50['fp32']:.3f}" for k in p50 if k != "fp32"), flush=True)
    return latency


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("int8-bench"))
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--iters", type=int, default=50, help="iterations per artifact per round")
    ap.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts to time")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ort_int8_latency.json")
    args = ap.parse_args()
    data, onnx_path = prepare(args.workdir)
    out = args.workdir / "artifacts"
    fp32 = build(BuildConfig(onnx=onnx_path, target=PrecisionTarget(backend="ort"), output=out / "fp32.onnx", force=True)).path
    int8_result = build(BuildConfig(onnx=onnx_path, target=PrecisionTarget("int8", "ort"), calib_data=data / "train",
                                    check_data=data / "val", output=out / "int8.onnx", force=True))
    full_result = build(BuildConfig(onnx=onnx_path, target=PrecisionTarget("int8", "ort"), calib_data=data / "train",
                                    int8=Int8Options(keep_float=0), output=out / "int8_full.onnx", force=True))
    artifacts = {"fp32": fp32, "int8": int8_result.path, "int8_full": full_result.path}

    contract = read_contract(onnx_path)
    paths = find_files(data / "val")
    tf = contract.preprocessing.eval_transform()
    x = np.stack([tf(load_image(p)).numpy() for p in paths])
    y = np.array([contract.classes.index(p.parent.name) for p in paths])
    logits = validation_logits(artifacts, x)
    accuracy = {k: float(np.mean(v.argmax(1) == y)) for k, v in logits.items()}
    agreement = {k: float(np.mean(v.argmax(1) == logits["fp32"].argmax(1))) for k, v in logits.items() if k != "fp32"}

    latency = latency_by_threads(artifacts, x[:1], args.threads, args.rounds, args.iters)
    result = {
        "cpu": cpu_info(), "machine": platform.machine(), "batch": 1, "input": "224x224",
        "validation_images": len(x), "latency": latency,
        "top1": accuracy, "top1_agreement_with_fp32": agreement,
        "top1_drop_points": {k: 100 * (accuracy["fp32"] - accuracy[k]) for k in agreement},
        "int8": int8_result.record["quantization"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("top-1: " + ", ".join(f"{k} {v:.4f}" for k, v in accuracy.items())
          + "; agreement with FP32: " + ", ".join(f"{k} {v:.4f}" for k, v in agreement.items()))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
