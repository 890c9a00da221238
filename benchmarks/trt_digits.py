"""TensorRT end to end on the digits model, for a machine with an NVIDIA GPU and TensorRT >= 10.3.

    pip install -e '.[tensorrt]'
    python benchmarks/trt_digits.py --workdir /tmp/trt-digits

Builds FP32, FP16 and INT8 (Q/DQ, calibrated on the training images) engines with `tldeploy build`,
runs each on the whole validation set through the runner interface and checks it against the
PyTorch checkpoint. Prints one table; exits 1 if an engine misses its agreement bound.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from tldeploy.contract import read_contract
from tldeploy.data.folders import find_files, write_digits
from tldeploy.engines.builder import BuildConfig, build
from tldeploy.engines.capabilities import PrecisionTarget
from tldeploy.export.onnx_export import ExportConfig, export_onnx
from tldeploy.parity import Tolerance, compare_outputs
from tldeploy.runtime.loader import load_runner
from tldeploy.runtime.runners import TorchRunner, run_batches
from tldeploy.train.training import TrainConfig, train

MIN_AGREEMENT = {"fp32": 0.995, "fp16": 0.99, "int8": 0.97}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("trt-digits"))
    ap.add_argument("--batch", default="1,8,32")
    args = ap.parse_args()
    data, onnx_path = args.workdir / "digits", args.workdir / "digits.onnx"
    if not data.exists():
        write_digits(data, size=64, val_fraction=0.2, seed=0)
    ckpt = args.workdir / "run" / "model.pt"
    if not ckpt.exists():
        train(TrainConfig(data=data, out_dir=args.workdir / "run", epochs=10, quiet=True, force=True))
    if not onnx_path.exists():
        export_onnx(ExportConfig(ckpt, onnx_path))
    contract = read_contract(onnx_path)
    paths = find_files(data / "val")
    x = np.stack([contract.preprocessing.load(p) for p in paths])
    y = np.array([contract.classes.index(p.parent.name) for p in paths])
    with TorchRunner(ckpt, device="cuda") as ref_runner:
        ref = run_batches(ref_runner, x)
    from tldeploy.engines.tensorrt import BatchProfile, TrtConfig

    ok = True
    print(f"{'engine':<8} {'build s':>8} {'top-1':>7} {'agree':>7} {'cosine':>9} {'logit max':>10}")
    print(f"{'pytorch':<8} {'':>8} {np.mean(ref['logits'].argmax(1) == y):>7.4f}")
    for precision in ("fp32", "fp16", "int8"):
        t0 = time.perf_counter()
        result = build(BuildConfig(onnx=onnx_path, target=PrecisionTarget(precision, "tensorrt"), force=True,
                                   calib_data=data / "train" if precision == "int8" else None,
                                   trt=TrtConfig(batch=BatchProfile.parse(args.batch))))
        with load_runner(result.path) as runner:
            out = run_batches(runner, x, batch=8)
        report = compare_outputs(ref, out, tolerance=Tolerance(min_top1_agreement=MIN_AGREEMENT[precision]))
        ok &= bool(report)
        print(f"{precision:<8} {time.perf_counter() - t0:>8.1f} {np.mean(out['logits'].argmax(1) == y):>7.4f} "
              f"{report.top1_agreement:>7.4f} {report.cosine:>9.6f} {report.logits_max_abs:>10.3g}"
              + ("" if report else "  FAIL: " + "; ".join(report.failures)))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
