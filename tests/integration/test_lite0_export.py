"""Export acceptance on the real model: the digits EfficientNet-Lite0 from the train stage."""

import time
from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from tldeploy.contract import read_contract
from tldeploy.export.onnx_export import ExportConfig, export_onnx
from tldeploy.modalities.preprocessing import Preprocessing
from tldeploy.models.checkpoints import load_checkpoint
from tldeploy.parity import Tolerance, compare_outputs, parity_inputs
from tldeploy.runtime.runners import OrtRunner, run_batches


@pytest.fixture(scope="session")
def val_inputs(fe_run, digits):
    model, meta = load_checkpoint(fe_run.checkpoint)
    x = parity_inputs(Preprocessing.from_dict(meta["preprocessing"]), digits / "val", n=10_000)
    with torch.no_grad():
        ref = dict(zip(("logits", "probs", "cam"), (t.numpy() for t in model.forward_with_cam(torch.from_numpy(x)))))
    return x, ref


def _runner(path):
    return OrtRunner(path).activate()


def test_fp32_export_matches_pytorch_on_the_whole_validation_set(fe_run, val_inputs, tmp_path):
    x, ref = val_inputs
    assert len(x) == 359
    t0 = time.perf_counter()
    result = export_onnx(ExportConfig(fe_run.checkpoint, tmp_path / "m.onnx"))
    print(f"\nexport of efficientnet_lite0 (dynamic batch, checks and parity included): {time.perf_counter() - t0:.1f} s")
    runner = _runner(result.path)
    for batch, n in ((7, len(x)), (1, 35)):  # the whole set in batches of 7; batch 1 (the dynamic axis) on every tenth
        report = compare_outputs({k: v[:: len(x) // n][:n] for k, v in ref.items()}, run_batches(runner, x[:: len(x) // n][:n], batch),
                                 tolerance=Tolerance(max_logit_diff=1e-4, min_top1_agreement=1.0))
        print(report.table(f"batch {batch}, {report.n} images"))
        assert report, report.failures
    assert read_contract(result.path).classes == [str(d) for d in range(10)]


def test_fp16_export_agrees_on_top1(fe_run, val_inputs, tmp_path):
    x, ref = val_inputs
    result = export_onnx(ExportConfig(fe_run.checkpoint, tmp_path / "m16.onnx", fp16=True))
    model = onnx.load(str(result.path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in model.graph.output)
    assert sum(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer) > 50
    report = compare_outputs(ref, run_batches(_runner(result.path), x, 7))
    print(report.table("fp16"))
    assert report.top1_agreement >= 0.995  # 100% here (AMD EPYC, 160 px): FP16 storage, FP32 arithmetic on this CPU


@pytest.mark.slow  # a second export of the real model (12 s); tests/unit/test_export.py checks the plugin export on the tiny CNN
def test_attention_plugin_export_has_one_node_per_block(fe_run, tmp_path):
    result = export_onnx(ExportConfig(fe_run.checkpoint, tmp_path / "p.onnx", attention_plugin=True))
    model = onnx.load(str(result.path))
    onnx.checker.check_model(model, full_check=True)
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["ChannelAttention"] == 1
    assert ops["Sigmoid"] == 0  # EfficientNet-Lite has no squeeze-excitation: any sigmoid would be attention
    assert ops["ReduceMax"] == 1  # only the CAM normalisation
    node = next(n for n in model.graph.node if n.op_type == "ChannelAttention")
    assert node.domain == "trt.plugins" and len(node.input) == 5
    assert np.array_equal(
        [a.s for a in node.attribute if a.name == "plugin_version"], [b"1"]
    )
