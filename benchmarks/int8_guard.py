"""The INT8 guard and `tldeploy diagnose` on the digits EfficientNet-Lite0 (224 px), in one run:

    python benchmarks/int8_guard.py --workdir /tmp/int8bench     # trains the digits model if needed

- diagnose --precision int8 (this CPU's default weight width) and --precision fp16: seconds;
- for 7-bit (reduce_range) and 8-bit weights: the default `tldeploy build --precision int8` with
  the validation images as --check-data, and without (held-out calibration images): units kept in float, top-1 agreement with the FP32 ONNX
  on the whole validation set and the accuracy drop, evaluated as the target computes (8-bit
  weights on a CPU without VNNI: the Q/DQ graph as written); and how many leading convolutions
  the old leading-convolution search would have needed for the same agreement;
- batch-1 p50 latency of the default INT8 artifact against FP32 (alternating rounds).
Writes results/int8_guard.json with the CPU's name, class and kernel-choosing flags.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).parent))
from ort_int8_latency import interleaved_p50, prepare  # noqa: E402

from tldeploy.contract import read_contract  # noqa: E402
from tldeploy.engines.builder import BuildConfig, build  # noqa: E402
from tldeploy.engines.calibration import CalibrationSet, ImageSet  # noqa: E402
from tldeploy.engines.capabilities import PrecisionTarget  # noqa: E402
from tldeploy.engines.diagnose import DiagnoseConfig, diagnose  # noqa: E402
from tldeploy.engines.quant_config import Int8Options, QuantConfig  # noqa: E402
from tldeploy.engines.quantizer import Quantizer  # noqa: E402
from tldeploy.engines.sensitivity import Evaluator, task_metrics  # noqa: E402
from tldeploy.runtime.host import cpu_info  # noqa: E402
from tldeploy.runtime.loader import load_runner  # noqa: E402


def leading_search(onnx_path: Path, data: Path, rr: bool, target: float, val: ImageSet, limit: int = 16) -> int | None:
    """Leading convolutions in float (graph order, as the guard before diagnose did) for `target`."""
    contract = read_contract(onnx_path)
    calib = CalibrationSet.from_folder(data / "train", contract.preprocessing, 256)
    from tldeploy.engines import artifacts

    with Quantizer(onnx_path, calib, QuantConfig.ort_x86(reduce_range=rr), artifacts.cache_dir() / "calibration") as q:
        ev = q.evaluator(val.images)
        outside = set(q.head) | q.front
        convs = [n.name for n in q.float_model.graph.node if n.op_type == "Conv" and n.name not in outside]
        for k in range(limit + 1):
            if ev.metrics(q.mix(convs[:k])).top1_agreement >= target:
                return k
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("int8-bench"))
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "int8_guard.json")
    args = ap.parse_args()
    data, onnx_path = prepare(args.workdir)
    contract = read_contract(onnx_path)
    val = ImageSet.from_folder(data / "val", contract.preprocessing, contract.classes)
    result: dict = {"cpu": cpu_info(), "validation_images": len(val.images), "default_reduce_range": QuantConfig.ort_x86().reduce_range}

    t0 = time.perf_counter()
    d8 = diagnose(DiagnoseConfig(onnx=onnx_path, target=PrecisionTarget("int8", "ort"), calib_data=data / "train", data=data / "val",
                                 output=args.workdir / "diagnose-int8", force=True))
    result["diagnose_int8"] = {"seconds": round(time.perf_counter() - t0, 1), "top5": [u["short"] for u in d8.ranking[:5]],
                               "plan_units": len(d8.document["plan"]["units"]), "plan": d8.document["plan"]["metrics"]}
    t0 = time.perf_counter()
    d16 = diagnose(DiagnoseConfig(onnx=onnx_path, target=PrecisionTarget("fp16", "ort"), data=data / "val", output=args.workdir / "diagnose-fp16", force=True))
    result["diagnose_fp16"] = {"seconds": round(time.perf_counter() - t0, 1), "top5": [u["short"] for u in d16.ranking[:5]],
                               "all_fp16": d16.document["all_low"], "plan_units": len(d16.document["plan"]["units"])}

    float_model = onnx.load(str(onnx_path))
    builds = {}
    for rr, check in ((True, True), (False, True), (True, False), (False, False)):
        cfg = QuantConfig.ort_x86(reduce_range=rr)
        t0 = time.perf_counter()
        r = build(BuildConfig(onnx=onnx_path, target=PrecisionTarget("int8", "ort"), calib_data=data / "train",
                              check_data=data / "val" if check else None, int8=Int8Options(reduce_range=rr), force=True,
                              output=args.workdir / f"digits.int8{'-rr' if rr else ''}{'' if check else '-held-out'}.ort.onnx"))
        seconds = time.perf_counter() - t0
        ev = Evaluator(val.images, contract.input_name, float_model, as_written=cfg.evaluated_as_written)
        logits = ev.outputs(onnx.load(str(r.path)), ["logits"])["logits"]
        m = task_metrics(ev.reference, logits)
        acc32 = float(np.mean(ev.reference.argmax(1) == val.labels))
        acc8 = float(np.mean(logits.argmax(1) == val.labels))
        units = r.record["quantization"]["float_units"]
        if check:
            builds[rr] = r.path
        key = ("int8_7bit" if rr else "int8_8bit") + ("" if check else "_held_out_check")
        result[key] = {
            "check": r.record["quantization"]["check"]["images"], "guard_passed": r.record["quantization"]["check"]["passed"],
            "build_seconds": round(seconds, 1), "evaluated": r.record["quantization"]["check"]["evaluated"],
            "float_units": [u["short"] for u in units], "top1_agreement_vs_fp32": m.top1_agreement, "kl": m.kl,
            "accuracy_fp32": acc32, "accuracy_int8": acc8, "drop_points": 100 * (acc32 - acc8),
            "leading_convs_for_same_agreement": leading_search(onnx_path, data, rr, m.top1_agreement, val) if check else None,
        }
        print(f"{'7-bit' if rr else '8-bit'} ({'check-data' if check else 'held-out'}): {len(units)} float unit(s) {[u['short'] for u in units]}, agreement {m.top1_agreement:.4f}, "
              f"drop {100 * (acc32 - acc8):.2f} points, leading convs for the same: {result[key]['leading_convs_for_same_agreement']}")

    fp32 = build(BuildConfig(onnx=onnx_path, target=PrecisionTarget(backend="ort"))).path
    runners = {"fp32": load_runner(fp32).activate(), "int8": load_runner(builds[QuantConfig.ort_x86().reduce_range]).activate()}
    p50 = interleaved_p50(runners, {contract.input_name: val.images[:1]}, args.rounds, args.iters, settle_s=0.05)
    for r in runners.values():
        r.deactivate()
    result["latency_batch1"] = {"p50_ms": p50, "ratio_int8_to_fp32": p50["int8"] / p50["fp32"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"diagnose int8 {result['diagnose_int8']['seconds']} s, fp16 {result['diagnose_fp16']['seconds']} s; "
          f"p50 batch 1 FP32 {p50['fp32']:.2f} ms, INT8 {p50['int8']:.2f} ms, ratio {p50['int8'] / p50['fp32']:.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
