"""INT8 and FP16 for a vision transformer trained on the digits, in one run:

    python benchmarks/vit_int8.py --workdir /tmp/vitbench     # trains the ViT if needed (minutes)

- trains timm's `test_vit` (a small ViT: 6 pre-norm blocks, width 64, 2 heads, patch 16, class
  token) from random weights on the digits at 64 px (4 x 4 patches), all layers, and exports it;
- the fully quantized INT8 (`keep_float=0`): top-1 agreement with the FP32 ONNX on the whole
  validation set and the accuracy drop;
- the default `tldeploy build --precision int8 --check-data VAL` for 7-bit (reduce_range) and
  8-bit weights, and with `--int8-preset none` at this CPU's default width: build seconds (the guard's search included), units kept in float by module path,
  agreement and accuracy drop, evaluated as the target computes;
- transformer presets measured, not assumed: the fully quantized model with the residual Adds,
  the LayerNorms, the Softmaxes, the GELUs, the linear layers, or all but the matrix products
  (with and without their bias Adds: the default preset) kept in float (this CPU's default weight
  width), each with its agreement;
- `diagnose --precision int8` and `--precision fp16`: their top five and seconds;
- batch-1 p50 of the default INT8 artifact and the fully quantized one against FP32 on ONNX
  Runtime CPU (alternating rounds), here and at ViT-Tiny's size (224 px, random weights).
Writes results/vit_int8.json with the CPU's name, class and kernel-choosing flags.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).parent))
from ort_int8_latency import interleaved_p50  # noqa: E402

from tldeploy.contract import read_contract  # noqa: E402
from tldeploy.data.folders import write_digits  # noqa: E402
from tldeploy.engines import artifacts  # noqa: E402
from tldeploy.engines.builder import BuildConfig, build  # noqa: E402
from tldeploy.engines.calibration import CalibrationSet, ImageSet  # noqa: E402
from tldeploy.engines.capabilities import PrecisionTarget  # noqa: E402
from tldeploy.engines.diagnose import DiagnoseConfig, diagnose  # noqa: E402
from tldeploy.engines.quant_config import Int8Options, QuantConfig  # noqa: E402
from tldeploy.engines.quantize import MATRIX_PRODUCTS, transformer_preset  # noqa: E402
from tldeploy.engines.quantizer import Quantizer  # noqa: E402
from tldeploy.engines.sensitivity import Evaluator, task_metrics  # noqa: E402
from tldeploy.export.onnx_export import ExportConfig, export_onnx  # noqa: E402
from tldeploy.modalities.preprocessing import AugmentConfig  # noqa: E402
from tldeploy.runtime.host import cpu_info  # noqa: E402
from tldeploy.runtime.loader import load_runner  # noqa: E402
from tldeploy.train.training import TrainConfig, train  # noqa: E402

BACKBONE, SIZE = "timm:test_vit", 64
# Candidate presets, each a set of nodes kept in float, measured on the fully quantized model.
PRESETS = {
    "residual Adds": lambda us: {n for u in us if u.op == "Add" and re.fullmatch(r"blocks\.\d+", u.short) for n in u.nodes},
    "LayerNorms": lambda us: {n for u in us if u.op == "LayerNormalization" for n in u.nodes},
    "Softmaxes": lambda us: {n for u in us if u.op == "Softmax" for n in u.nodes},
    "GELUs": lambda us: {n for u in us if u.short.endswith("mlp.act") for n in u.nodes},
    "linear layers (MatMul+bias)": lambda us: {n for u in us if u.op.startswith("MatMul+Add") for n in u.nodes},
    "all but matrix products, bias Adds quantized": lambda us: {n for u in us if u.op.split("+")[0] not in MATRIX_PRODUCTS for n in u.nodes},
    "the transformer preset (all but matrix products)": transformer_preset,
}


def prepare(workdir: Path, epochs: int) -> tuple[Path, Path, dict]:
    data, onnx_path = workdir / "digits", workdir / "vit.onnx"
    if not data.exists():
        write_digits(data, size=64, val_fraction=0.2, seed=0)
    info: dict = {"backbone": BACKBONE, "image_size": SIZE, "weights": "none (random init)", "epochs": epochs}
    if not onnx_path.exists():
        t0 = time.perf_counter()
        # From scratch: every layer from the first epoch at one learning rate, no head-only
        # warm-up (the features are random), no horizontal flips (a mirrored digit is another glyph).
        run = train(TrainConfig(data=data, out_dir=workdir / "run", backbone=BACKBONE, weights="none", mode="finetune",
                                epochs=epochs, warmup_epochs=0, batch_size=64, lr=1e-3, backbone_lr=1e-3, layer_decay=1.0,
                                weight_decay=0.05, dropout=0.0, image_size=SIZE, quiet=True, force=True,
                                augment=AugmentConfig(crop_scale=0.7, hflip=False, color_jitter=0.0)))
        info["train_seconds"] = round(time.perf_counter() - t0, 1)
        info["val_metrics"] = {k: v for k, v in run.metrics.items() if isinstance(v, (int, float))}
        export_onnx(ExportConfig(run.checkpoint, onnx_path))
        (workdir / "model.json").write_text(json.dumps(info, indent=2) + "\n")
    return data, onnx_path, json.loads((workdir / "model.json").read_text())


def at_scale(workdir: Path, data: Path, rounds: int, iters: int) -> dict:
    """Batch-1 latency only, at the size ViTs are used: timm's vit_tiny_patch16_224 (12 blocks,
    width 192, 197 tokens) with random weights: FP32, the default INT8 (with the preset; keep_float
    0, so no guard on a random model) and every unit quantized, calibrated on 64 digits."""
    onnx_path = workdir / "vit_tiny_224.onnx"
    if not onnx_path.exists():
        run = train(TrainConfig(data=data, out_dir=workdir / "run-224", backbone="timm:vit_tiny_patch16_224", weights="none",
                                mode="finetune", epochs=1, warmup_epochs=0, limit_per_class=4, batch_size=8, image_size=224,
                                quiet=True, force=True, augment=AugmentConfig.off()))
        export_onnx(ExportConfig(run.checkpoint, onnx_path))
    paths = {"fp32": build(BuildConfig(onnx=onnx_path, target=PrecisionTarget(backend="ort"), force=True, output=workdir / "vt.fp32.ort.onnx")).path}
    for name, preset in (("int8", "auto"), ("int8_fully_quantized", "none")):
        paths[name] = build(BuildConfig(onnx=onnx_path, target=PrecisionTarget("int8", "ort"), calib_data=data / "train", int8=Int8Options(calib_samples=64, keep_float=0, preset=preset), force=True, output=workdir / f"vt.{name}.ort.onnx")).path
    contract = read_contract(onnx_path)
    images = ImageSet.from_folder(data / "val", contract.preprocessing, contract.classes).images[:1]
    runners = {k: load_runner(p).activate() for k, p in paths.items()}
    p50 = interleaved_p50(runners, {contract.input_name: images}, rounds, iters, settle_s=0.05)
    for runner in runners.values():
        runner.deactivate()
    print(f"vit_tiny_patch16_224: p50 batch 1 {p50}")
    return {"model": "timm:vit_tiny_patch16_224 at 224 px, random weights", "p50_ms": p50,
            "ratio_int8_to_fp32": p50["int8"] / p50["fp32"], "ratio_fully_quantized_to_fp32": p50["int8_fully_quantized"] / p50["fp32"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("vit-bench"))
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--no-at-scale", dest="at_scale", action="store_false", help="skip the ViT-Tiny 224 px latency")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "vit_int8.json")
    args = ap.parse_args()
    data, onnx_path, info = prepare(args.workdir, args.epochs)
    contract = read_contract(onnx_path)
    val = ImageSet.from_folder(data / "val", contract.preprocessing, contract.classes)
    float_model = onnx.load(str(onnx_path))
    result: dict = {"cpu": cpu_info(), "model": info, "validation_images": len(val.images),
                    "default_reduce_range": QuantConfig.ort_x86().reduce_range}

    def score(path_or_model, rr: bool) -> dict:
        cfg = QuantConfig.ort_x86(reduce_range=rr)
        ev = Evaluator(val.images, contract.input_name, float_model, as_written=cfg.evaluated_as_written)
        model = onnx.load(str(path_or_model)) if isinstance(path_or_model, Path) else path_or_model
        logits = ev.outputs(model, ["logits"])["logits"]
        m = task_metrics(ev.reference, logits)
        acc32 = float(np.mean(ev.reference.argmax(1) == val.labels))
        acc8 = float(np.mean(logits.argmax(1) == val.labels))
        return {"top1_agreement_vs_fp32": m.top1_agreement, "kl": m.kl, "cosine": m.cosine,
                "accuracy_fp32": acc32, "accuracy_int8": acc8, "drop_points": 100 * (acc32 - acc8)}

    rr_default = QuantConfig.ort_x86().reduce_range
    calib = CalibrationSet.from_folder(data / "train", contract.preprocessing, 256)
    with Quantizer(onnx_path, calib, QuantConfig.ort_x86(reduce_range=rr_default), artifacts.cache_dir() / "calibration") as q:
        units = q.units()
        result["units"] = {"count": len(units), "by_op": {op: sum(u.op == op for u in units) for op in sorted({u.op for u in units})}}
        result["fully_quantized"] = score(q.full(), rr_default)
        presets = {}
        for name, pick in PRESETS.items():
            floats = pick(units)
            presets[name] = {"float_nodes": len(floats), **score(q.mix(sorted(floats)), rr_default)}
            print(f"preset {name}: {len(floats)} node(s) in float, agreement {presets[name]['top1_agreement_vs_fp32']:.4f}")
        result["presets_in_float"] = presets
    print(f"fully quantized: {result['fully_quantized']}")

    builds = {}
    for rr, preset in ((True, "auto"), (False, "auto"), (rr_default, "none")):
        t0 = time.perf_counter()
        tag = f"{'-rr' if rr else ''}{'-no-preset' if preset == 'none' else ''}"
        r = build(BuildConfig(onnx=onnx_path, target=PrecisionTarget("int8", "ort"), calib_data=data / "train", check_data=data / "val",
                              int8=Int8Options(reduce_range=rr, preset=preset), force=True, output=args.workdir / f"vit.int8{tag}.ort.onnx"))
        seconds = time.perf_counter() - t0
        quant = r.record["quantization"]
        builds[(rr, preset)] = r.path
        key = ("int8_7bit" if rr else "int8_8bit") + ("_preset_none" if preset == "none" else "")
        result[key] = {"build_seconds": round(seconds, 1), "guard_passed": quant["check"]["passed"],
                       "evaluated": quant["check"]["evaluated"], "float_units": [u["short"] for u in quant["float_units"]],
                       "float_regions": quant.get("float_regions"), **score(r.path, rr)}
        print(f"{key}: {seconds:.0f} s, float units {result[key]['float_units']}, agreement {result[key]['top1_agreement_vs_fp32']:.4f}, "
              f"drop {result[key]['drop_points']:.2f} points")

    t0 = time.perf_counter()
    d8 = diagnose(DiagnoseConfig(onnx=onnx_path, target=PrecisionTarget("int8", "ort"), calib_data=data / "train", data=data / "val",
                                 output=args.workdir / "diagnose-int8", force=True))
    result["diagnose_int8"] = {"seconds": round(time.perf_counter() - t0, 1), "top5": [u["short"] for u in d8.ranking[:5]],
                               "plan_units": len(d8.document["plan"]["units"])}
    t0 = time.perf_counter()
    d16 = diagnose(DiagnoseConfig(onnx=onnx_path, target=PrecisionTarget("fp16", "ort"), data=data / "val", output=args.workdir / "diagnose-fp16", force=True))
    result["diagnose_fp16"] = {"seconds": round(time.perf_counter() - t0, 1), "top5": [u["short"] for u in d16.ranking[:5]],
                               "all_fp16": d16.document["all_low"], "plan_units": len(d16.document["plan"]["units"])}
    print(f"diagnose int8 top five {result['diagnose_int8']['top5']}; fp16 {result['diagnose_fp16']['top5']}")

    fp32 = build(BuildConfig(onnx=onnx_path, target=PrecisionTarget(backend="ort"), output=args.workdir / "vit.fp32.ort.onnx", force=True)).path
    full = build(BuildConfig(onnx=onnx_path, target=PrecisionTarget("int8", "ort"), calib_data=data / "train", int8=Int8Options(keep_float=0, preset="none"),
                             force=True, output=args.workdir / "vit.int8-full.ort.onnx")).path
    runners = {"fp32": load_runner(fp32).activate(), "int8": load_runner(builds[(rr_default, "auto")]).activate(),
               "int8_fully_quantized": load_runner(full).activate()}
    p50 = interleaved_p50(runners, {contract.input_name: val.images[:1]}, args.rounds, args.iters, settle_s=0.05)
    for runner in runners.values():
        runner.deactivate()
    result["latency_batch1"] = {"p50_ms": p50, "ratio_int8_to_fp32": p50["int8"] / p50["fp32"],
                                "ratio_fully_quantized_to_fp32": p50["int8_fully_quantized"] / p50["fp32"]}
    print(f"p50 batch 1 FP32 {p50['fp32']:.2f} ms, INT8 {p50['int8']:.2f} ms, ratio {p50['int8'] / p50['fp32']:.3f}")
    if args.at_scale:
        result["latency_at_vit_tiny_scale"] = at_scale(args.workdir, data, args.rounds, args.iters)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
