"""Build and bench acceptance on the real model: the digits EfficientNet-Lite0 (224 px) from the train stage."""

import json

import numpy as np
import pytest

from tldeploy.bench.parity import compare_outputs
from tldeploy.build.builder import BuildConfig, build
from tldeploy.build.runners import TorchRunner, load_runner, run_batches
from tldeploy.export.contract import read_contract
from tldeploy.export.onnx_export import ExportConfig, export_onnx
from tldeploy.pipeline.data import find_files, load_image


@pytest.fixture(scope="module")
def exported(fe_run, tmp_path_factory):
    return export_onnx(ExportConfig(fe_run.checkpoint, tmp_path_factory.mktemp("build") / "digits.onnx")).path


@pytest.fixture(scope="module")
def labelled_val(exported, digits):
    contract = read_contract(exported)
    paths = find_files(digits / "val")
    tf = contract.preprocessing.eval_transform()
    x = np.stack([tf(load_image(p)).numpy() for p in paths])
    y = np.array([contract.classes.index(p.parent.name) for p in paths])
    return x, y


def _accuracy(artifact, x, y):
    with load_runner(artifact) as r:
        out = run_batches(r, x)
    return float(np.mean(out["logits"].argmax(1) == y)), out


@pytest.fixture(scope="module")
def ort_builds(exported, digits, tmp_path_factory):
    """The demo's builds: ONNX Runtime FP32 and INT8 (calibrated on the training images)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLDEPLOY_CACHE", str(tmp_path_factory.mktemp("cache")))
        fp32 = build(BuildConfig(onnx=exported, backend="ort"))
        int8 = build(BuildConfig(onnx=exported, precision="int8", backend="ort", calib_data=digits / "train"))
    return fp32, int8


def test_ort_int8_keeps_accuracy_within_one_point(ort_builds, labelled_val, fe_run):
    x, y = labelled_val
    assert len(x) == 359
    fp32, int8 = ort_builds
    q = int8.record["quantization"]
    acc32, out32 = _accuracy(fp32.path, x, y)
    acc8, out8 = _accuracy(int8.path, x, y)
    with TorchRunner(fe_run.checkpoint) as ref_runner:
        ref = run_batches(ref_runner, x)
    print(f"\nINT8 build {int8.seconds:.0f} s, {q['keep_float_convs']} leading conv(s) float; "
          f"top-1 FP32 {acc32:.4f} INT8 {acc8:.4f} (drop {100 * (acc32 - acc8):.2f} points); "
          f"INT8 vs PyTorch agreement {compare_outputs(ref, out8).top1_agreement:.4f}")
    assert compare_outputs(ref, out32, max_logit_diff=1e-4, min_top1_agreement=1.0)
    assert acc32 - acc8 <= 0.01
    stats = q["qdq"]
    assert stats["activation_zero_point_types"] == ["uint8"] and stats["weight_zero_point_types"] == ["int8"]
    assert stats["per_channel_weights"] == 49 - q["keep_float_convs"]  # every other conv of the backbone


def test_demo_bench_on_the_real_model_validates_against_the_schema(ort_builds, fe_run, digits, tmp_path, capsys):
    """The demo's bench stage (`tldeploy bench` with the demo's artifacts and data), on half the
    validation images and fewer iterations."""
    import jsonschema

    from tldeploy.bench.bench import SCHEMA_PATH
    from tldeploy.cli import main

    fp32, int8 = ort_builds
    out = tmp_path / "bench.json"
    rc = main(["bench", str(fp32.path), str(int8.path), "--reference", str(fe_run.checkpoint), "--data", str(digits / "val"),
               "-o", str(out), "--batch-sizes", "1,8", "--iters", "10", "--rounds", "2", "--limit", "180", "-q",
               "--max-top1-drop", "1", "--min-top1-agreement", "0.98"])
    print("\n" + capsys.readouterr().out)
    assert rc == 0
    doc = json.loads(out.read_text())
    jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text())).validate(doc)
    ref, a32, a8 = doc["results"]
    assert doc["data"]["images"] == 180 and a32["parity"]["top1_agreement"] == 1.0 and a32["accuracy"] == ref["accuracy"]
    assert a8["parity"]["accuracy_delta"] >= -0.01 and all(g["passed"] for g in a8["gates"])
    assert (out.parent / "bench_plots" / "latency.png").is_file() and "## digits.int8.ort.onnx" in out.with_suffix(".md").read_text()


@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_engines_match_pytorch(exported, digits, labelled_val, fe_run, precision):
    x, y = labelled_val
    cfg = BuildConfig(onnx=exported, precision=precision, backend="tensorrt",
                      calib_data=digits / "train" if precision == "int8" else None)
    engine = build(cfg)
    acc, out = _accuracy(engine.path, x, y)
    with TorchRunner(fe_run.checkpoint) as ref_runner:
        ref = run_batches(ref_runner, x)
    report = compare_outputs(ref, out, min_top1_agreement={"fp32": 0.995, "fp16": 0.99, "int8": 0.97}[precision])
    assert report, report.table(f"TensorRT {precision}")
