"""Quantization-aware training on the digits EfficientNet-Lite0 (224 px): every unit INT8.

    python benchmarks/qat.py --workdir /tmp/int8bench     # trains the digits model if needed (as ort_int8_latency.py)
    python benchmarks/qat.py --workdir /tmp/int8bench --seeds 0,1,2   # and QAT's agreement at other seeds

For ONNX Runtime x86 with 8-bit and with 7-bit weights, and for TensorRT: `tldeploy qat` (timed),
export, and the INT8 build from its trained ranges with no unit in float, measured on the whole
validation set as the target computes (ONNX Runtime's kernels on a VNNI CPU; the Q/DQ graph as
written for TensorRT and for 8-bit weights on a CPU without VNNI), against the FP32 model. Then
batch-1 p50 of FP32, the guarded post-training INT8 and the QAT INT8 for this CPU's width, in one
interleaved run at each thread count. Results: benchmarks/results/qat.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from ort_int8_latency import latency_by_threads, prepare, validation_logits  # noqa: E402

from tldeploy.contract import read_contract  # noqa: E402
from tldeploy.data.folders import find_files, load_image  # noqa: E402
from tldeploy.engines.builder import BuildConfig, build  # noqa: E402
from tldeploy.engines.capabilities import PrecisionTarget  # noqa: E402
from tldeploy.engines.quant_config import Int8Options  # noqa: E402
from tldeploy.export.onnx_export import ExportConfig, export_onnx  # noqa: E402
from tldeploy.qat import QatConfig, qat  # noqa: E402
from tldeploy.runtime.host import cpu_info, has_vnni  # noqa: E402

TARGETS = {"ort-x86 8-bit": ("ort-x86", False), "ort-x86 7-bit": ("ort-x86", True), "tensorrt": ("tensorrt", None)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("int8-bench"))
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--samples-per-epoch", type=int, default=832)
    ap.add_argument("--lr", type=float, default=5e-6)
    ap.add_argument("--step-lr", type=float, default=3e-3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--range-lr", type=float, default=1e-3)
    ap.add_argument("--clip-lr", type=float, default=1e-3)
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--seeds", default="0", help="QAT seeds; the first one's artifacts are timed, the others' agreement and accuracy recorded")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "qat.json")
    args = ap.parse_args()
    data, onnx_path = prepare(args.workdir)
    run_ckpt = args.workdir / "run" / "model.pt"
    out = args.workdir / "qat"
    results: dict = {"cpu": cpu_info(), "machine": platform.machine(), "input": "224x224",
                     "settings": {"epochs": args.epochs, "samples_per_epoch": args.samples_per_epoch, "lr": args.lr, "step_lr": args.step_lr, "range_lr": args.range_lr,
                                  "clip_lr": args.clip_lr, "batch_size": args.batch_size},
                     "targets": {}}
    seeds = [int(v) for v in args.seeds.split(",")]
    artifacts: dict[str, Path] = {}
    for seed in seeds:
        for name in args.targets.split(","):
            first = seed == seeds[0]
            row, int8_path = run_target(args, name, seed, data, run_ckpt, out, timed=first)
            if first:
                results["targets"][name] = row
                if int8_path is not None:
                    artifacts["int8_qat"] = int8_path
            else:
                results.setdefault("other_seeds", {}).setdefault(str(seed), {})[name] = {
                    k: row[k] for k in ("qat_seconds", "qat_top1_agreement", "qat_accuracy", "accuracy_drop_points", "best_epoch")}
    if len(seeds) > 1:
        results["seeds"] = seeds
    if "int8_qat" in artifacts:
        artifacts["fp32"] = build(BuildConfig(onnx=onnx_path, target=PrecisionTarget(backend="ort"), output=out / "fp32.onnx", force=True)).path
        artifacts["int8_guarded_ptq"] = build(BuildConfig(onnx=onnx_path, target=PrecisionTarget("int8", "ort"), calib_data=data / "train",
                                                          check_data=data / "val", output=out / "int8_ptq.onnx", force=True)).path
        contract = read_contract(onnx_path)
        tf = contract.preprocessing.eval_transform()
        paths = find_files(data / "val")
        x = np.stack([tf(load_image(p)).numpy() for p in paths])
        y = np.array([contract.classes.index(p.parent.name) for p in paths])
        logits = validation_logits(artifacts, x)
        results["onnxruntime_kernels"] = {k: {"accuracy": float(np.mean(v.argmax(1) == y)),
                                              "top1_agreement_with_fp32": float(np.mean(v.argmax(1) == logits["fp32"].argmax(1)))}
                                          for k, v in logits.items()}
        latency = latency_by_threads(artifacts, x[:1], args.threads, args.rounds, args.iters)
        results["latency_batch1"] = latency
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


def run_target(args, name: str, seed: int, data: Path, run_ckpt: Path, out: Path, timed: bool) -> tuple[dict, Path | None]:
    """`tldeploy qat` for one target and seed, measured; with `timed`, the INT8 build of it when it
    is the width this CPU builds by default, for the latency run."""
    flavour, rr = TARGETS[name]
    folder = out / (name.replace(" ", "-") + (f"-seed{seed}" if seed else ""))
    t0 = time.perf_counter()
    r = qat(QatConfig(run_ckpt, data / "train", data / "val", folder, flavour=flavour, reduce_range=rr, epochs=args.epochs,
                      samples_per_epoch=args.samples_per_epoch, lr=args.lr, step_lr=args.step_lr, range_lr=args.range_lr, clip_lr=args.clip_lr,
                      batch_size=args.batch_size, seed=seed, quiet=True, force=True))
    seconds = time.perf_counter() - t0
    m = r.metrics
    fp32_acc = m["fp32_accuracy"]
    row = {
        "qat_seconds": round(seconds, 1), "evaluated": m["qat"]["evaluated"],
        "ptq_fully_int8_top1_agreement": m["ptq"]["top1_agreement"],
        "qat_top1_agreement": m["qat"]["top1_agreement"], "qat_accuracy": m["qat"]["accuracy"], "fp32_accuracy": fp32_acc,
        "accuracy_drop_points": 100 * (fp32_acc - m["qat"]["accuracy"]), "best_epoch": m["best_epoch"],
        "history": m["history"], "scales_differing_from_simulation": m["scales_differing_from_simulation"],
    }
    print(f"{name} seed {seed}: QAT {seconds:.0f} s; fully INT8 agreement PTQ {100 * m['ptq']['top1_agreement']:.2f}% -> QAT "
          f"{100 * m['qat']['top1_agreement']:.2f}%, accuracy {m['qat']['accuracy']:.4f} (FP32 {fp32_acc:.4f}), {m['qat']['evaluated']}",
          flush=True)
    if not (timed and flavour == "ort-x86" and rr == (not has_vnni())):  # the width this CPU builds by default
        return row, None
    qat_onnx = export_onnx(ExportConfig(r.checkpoint, folder.with_suffix(".onnx"), force=True)).path
    return row, build(BuildConfig(qat_onnx, PrecisionTarget("int8", "ort"), int8=Int8Options(reduce_range=rr), output=out / "int8_qat.onnx", force=True)).path


if __name__ == "__main__":
    main()
