"""`tldeploy diagnose` and precision plans on tiny models with planted faults: an INT8-hostile
layer (an outlier channel in its input) and a layer whose activations overflow FP16 (a large
scale before a normalisation). Each must be ranked first and named by its module path."""

import json

import numpy as np
import onnx
import pytest
import torch
from _images import make_blob_images
from torch import nn

from tldeploy.cli import main
from tldeploy.contract import read_contract
from tldeploy.engines.builder import BuildConfig, build
from tldeploy.engines.calibration import CalibrationSet, ImageSet
from tldeploy.engines.capabilities import PrecisionTarget
from tldeploy.engines.diagnose import DiagnoseConfig, diagnose
from tldeploy.engines.mixed import fp16_emulated, mixed_int8
from tldeploy.engines.plan import load_plan
from tldeploy.engines.quant_config import QuantConfig
from tldeploy.engines.quantize import quantize_model
from tldeploy.engines.quantizer import Quantizer
from tldeploy.engines.sensitivity import Evaluator, task_metrics
from tldeploy.errors import ConfigError
from tldeploy.export.onnx_export import ExportConfig, export_onnx
from tldeploy.modalities.preprocessing import AugmentConfig, Preprocessing
from tldeploy.models.backbones import Backbone, BackboneSpec, Weights, register_backbone
from tldeploy.scopes import module_paths, short_names
from tldeploy.train.training import TrainConfig, train

HOSTILE = "backbone.features.stages.2.0"  # reads the outlier channel planted in stage 1's output


class _Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.register_buffer("factor", torch.tensor(factor))

    def forward(self, x):
        return x * self.factor


class _TrapCNN(nn.Module):
    """conv -> ReLU -> x60000 -> GroupNorm -> ReLU -> conv: fine in float32, while FP16 (max
    65504) overflows right after the scale."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU())
        self.scale = _Scale(6e4)
        self.norm = nn.GroupNorm(4, 16)
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU())

    def forward(self, x):
        return self.head(self.norm(self.scale(self.stem(x))))


@register_backbone("test_fp16_trap", "tiny CNN with a scale that overflows FP16 before a GroupNorm (tests only)")
def _fp16_trap(weights: Weights) -> Backbone:
    prep = Preprocessing(input_size=32, resize_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    return Backbone(_TrapCNN(), BackboneSpec("test_fp16_trap", prep, "", "none", "fp16 trap"), 16)


@pytest.fixture(scope="module")
def trap_onnx(tmp_path_factory):
    root = tmp_path_factory.mktemp("trap")
    data = root / "data"
    make_blob_images(data / "train", 24, seed=0)
    make_blob_images(data / "val", 16, seed=1)
    run = train(TrainConfig(data=data, out_dir=root / "run", backbone="test_fp16_trap", mode="finetune", epochs=2,
                            warmup_epochs=1, batch_size=8, lr=1e-2, quiet=True, augment=AugmentConfig.off()))
    return export_onnx(ExportConfig(run.checkpoint, root / "trap.onnx")).path, data


# ------------------------------------------------------------ names


def test_units_are_named_by_their_pytorch_module(tiny):
    model = onnx.load(str(tiny[1]))
    paths = module_paths(model)
    convs = [paths[n.name] for n in model.graph.node if n.op_type == "Conv"]
    # A convolution with its BatchNorm folded in still names the convolution.
    assert convs == ["backbone.features.stages.0.0", "backbone.features.stages.1.0", "backbone.features.stages.2.0"]
    gemms = {paths[n.name] for n in model.graph.node if n.op_type == "Gemm"}
    assert gemms == {"head.attention.fc1", "head.attention.fc2", "head.classifier"}
    short = short_names(["backbone.features.model.blocks.1.0.conv_pw", "backbone.features.model.conv_stem", "head.classifier"])
    assert short == {"backbone.features.model.blocks.1.0.conv_pw": "blocks.1.0.conv_pw",
                     "backbone.features.model.conv_stem": "conv_stem", "head.classifier": "head.classifier"}
    assert short_names(convs)[convs[2]] == "stages.2.0"  # never a bare index
    # a node of the wrapper itself (a ViT's position-embedding Add) stays whole and shortens nothing
    vit = short_names(["backbone.features", "backbone.features.model.blocks.0.attn.qkv", "backbone.features.model.norm"])
    assert vit == {"backbone.features": "backbone.features", "backbone.features.model.blocks.0.attn.qkv": "blocks.0.attn.qkv",
                   "backbone.features.model.norm": "norm"}


def test_a_shared_weight_does_not_rename_a_layer():
    """The exporter keeps one copy of identical initializers (untrained LayerNorms' all-ones weights),
    named after the first: a LayerNorm is named by its scope, a convolution by its weight only where
    the weight's module is a sibling of the scope's (a folded BatchNorm)."""
    from onnx import helper

    from tldeploy.scopes import SCOPES_KEY, module_path

    def node(op: str, scope: str, weight: str):
        n = helper.make_node(op, ["x", f"model.{weight}.weight"], ["y"])
        entry = n.metadata_props.add()
        entry.key, entry.value = SCOPES_KEY, str(["", f"model.{scope}", "op"])
        return n

    inits = {"model.blocks.0.norm1.weight", "model.blocks.1.0.conv_pw.weight", "model.stem.conv.weight"}
    assert module_path(node("LayerNormalization", "blocks.1.norm1", "blocks.0.norm1"), inits) == "blocks.1.norm1"
    assert module_path(node("Conv", "blocks.1.0.bn1", "blocks.1.0.conv_pw"), inits) == "blocks.1.0.conv_pw"
    assert module_path(node("Conv", "blocks.1.0.bn1", "stem.conv"), inits) == "blocks.1.0.bn1"


def test_simplified_export_keeps_the_module_names(tiny, tmp_path):
    path = export_onnx(ExportConfig(tiny[0], tmp_path / "slim.onnx", simplify=True)).path
    paths = module_paths(onnx.load(str(path)))
    assert sorted(p for p in paths.values() if p.startswith("backbone.features.stages") and p.endswith(".0"))[:3] == [
        "backbone.features.stages.0.0", "backbone.features.stages.1.0", "backbone.features.stages.2.0"]


# ------------------------------------------------------------ the mixing machinery


def test_mixed_int8_models_span_float_to_fully_quantized(tiny, tmp_path):
    onnx_path, data = tiny[1], tiny[2]
    contract = read_contract(onnx_path)
    calib = CalibrationSet.from_folder(data / "train", contract.preprocessing, 32)
    val = ImageSet.from_folder(data / "val", contract.preprocessing, contract.classes)
    with Quantizer(onnx_path, calib, QuantConfig.ort_x86(reduce_range=True), tmp_path / "c") as q:
        ev = Evaluator(val.images, contract.input_name, q.float_model, as_written=True)
        full = q.full()
        every = [n for u in q.units() for n in u.nodes]
        assert [u.module for u in q.units() if u.op.startswith("Conv")] == [
            "backbone.features.stages.0.0", "backbone.features.stages.1.0", "backbone.features.stages.2.0"]
        none = mixed_int8(q.float_model, full, [])
        assert not any(n.op_type == "DequantizeLinear" for n in none.graph.node)
        assert ev.metrics(none).kl < 1e-10
        all_ = mixed_int8(q.float_model, full, every)
        onnx.checker.check_model(all_)
        np.testing.assert_allclose(ev.outputs(all_, ["logits"])["logits"], ev.outputs(full, ["logits"])["logits"], atol=1e-5)
        # A quantized conv's float weight is not carried along (it made mixed artifacts 3x larger).
        float_weights = {i.name for i in q.float_model.graph.initializer}
        conv_weights = {n.input[1] for n in q.float_model.graph.node if n.op_type == "Conv"}
        assert conv_weights and not conv_weights & {i.name for i in all_.graph.initializer} & float_weights
        # One unit quantized: exactly its weight (and bias) and input activation get Q/DQ.
        conv = q.units()[1]
        one = mixed_int8(q.float_model, full, conv.nodes)
        assert sum(n.op_type == "QuantizeLinear" for n in one.graph.node) == 1
        assert sum(n.op_type == "DequantizeLinear" for n in one.graph.node) == 3


def test_fp16_emulation_rounds_and_overflows_like_half_precision(trap_onnx):
    model = onnx.load(str(trap_onnx[0]))
    contract = read_contract(trap_onnx[0])
    x = np.random.default_rng(0).standard_normal((4, *contract.preprocessing.input_shape)).astype(np.float32)
    ev = Evaluator(x, contract.input_name, model, as_written=False)
    scale = next(n for n in model.graph.node if n.op_type == "Mul" and module_paths(model)[n.name] == "backbone.features.scale")
    out = ev.outputs(fp16_emulated(model, [scale.name], probe=scale.name), ["logits", scale.output[0], scale.output[0] + "__ref"])
    ref = out[scale.output[0] + "__ref"]
    assert np.abs(ref).max() > 65504  # the planted overflow is real in float32 ...
    low = out[scale.output[0]]
    assert np.isinf(low).any()  # ... and becomes inf in FP16, not silently kept by the runtime
    fin = np.isfinite(low)
    np.testing.assert_array_equal(low[fin], low[fin].astype(np.float16).astype(np.float32))  # values FP16 can hold
    # Input and output each rounded once (2^-11 relative): within 2^-10 of float32, and not exact.
    np.testing.assert_allclose(low[fin], ref[fin], rtol=2**-10 * 1.001, atol=1e-6)
    assert not np.array_equal(low[fin], ref[fin])


def test_the_search_prefers_fewer_float_regions(tiny):
    """A pass in two pieces (two float/INT8 boundaries) loses to a contiguous pass with one unit more."""
    from tldeploy.engines.sensitivity import Acceptance, TaskMetrics, choose
    from tldeploy.engines.units import float_regions, group_units
    from tldeploy.parity import Tolerance

    model = onnx.load(str(tiny[1]))
    convs = group_units(model, [n.name for n in model.graph.node if n.op_type == "Conv"])
    assert float_regions(model, [convs[0], convs[2]]) == 2 and float_regions(model, convs[:2]) == 1

    def metrics(units):  # {conv0, conv2} passes, and so does {conv0, conv1, conv2}; nothing smaller
        names = {u.name for u in units}
        ok = {convs[0].name, convs[2].name} <= names
        return TaskMetrics(10, 1.0 if ok else 0.5, 0.0 if ok else 1.0, 1.0, 0)

    accept = Acceptance(Tolerance(min_top1_agreement=0.99), "test")
    ranked, graph = [convs[2], convs[0], convs[1]], list(convs)
    units, _, history, passed = choose({"ranked": ranked, "graph order": graph}, metrics, accept, 3,
                                       regions=lambda us: float_regions(model, us))
    assert passed and [u.name for u in units] == [c.name for c in convs]  # contiguous, 3 units
    assert ("ranked", 2) in [(o, k) for o, k, _ in history]  # the 2-unit pass was seen and set aside
    units, *_ = choose({"ranked": ranked, "graph order": graph}, metrics, accept, 3)  # without the region count
    assert len(units) == 2


def test_int8_scores_add_the_kl_a_unit_causes_alone_and_the_kl_its_float_copy_removes(monkeypatch):
    """With a stand-in evaluator of chosen KLs per mix: score = KL with the unit alone in INT8 + (full INT8's KL -
    KL with all but the unit in INT8), the removal counted only when positive; ranked by score, ties by graph order,
    a unit whose output overflows FP16 first among equals."""
    from dataclasses import replace
    from types import SimpleNamespace

    import tldeploy.engines.sensitivity as sens
    from tldeploy.engines.units import Unit

    units = [Unit("conv_a", ("conv_a", "relu_a"), "Conv+Relu", "m.a", "a", 0), Unit("conv_b", ("conv_b",), "Conv", "m.b", "b", 2),
             Unit("add_c", ("add_c",), "Add", "m.c", "c", 3)]
    names = frozenset(n for u in units for n in u.nodes)
    full = sens.TaskMetrics(10, 0.5, 1.0, 0.9, 0)
    kl = {frozenset(u.nodes): low for u, low in zip(units, (0.05, 0.3, 0.1), strict=True)}  # the unit alone in INT8
    kl |= {names - set(u.nodes): rest for u, rest in zip(units, (0.25, 0.875, 1.25), strict=True)}  # all but the unit
    monkeypatch.setattr(sens, "mixed_int8", lambda float_model, qdq_model, nodes: frozenset(nodes))
    ev = SimpleNamespace(metrics=lambda key: sens.TaskMetrics(10, 0.9, kl[key], 0.99, 0))
    effects = sens.sweep_int8(ev, "float", "qdq", units, full)
    assert [e.unit for e in effects] == units
    assert [e.alone_low.kl for e in effects] == [0.05, 0.3, 0.1] and [e.alone_float.kl for e in effects] == [0.25, 0.875, 1.25]
    assert [e.score for e in effects] == pytest.approx([0.05 + 0.75, 0.3 + 0.125, 0.1 + 0.0])  # c's float copy adds KL: 0
    assert [e.unit.name for e in sens.rank(effects)] == ["conv_a", "conv_b", "add_c"]
    tied = [sens.UnitEffect(u, None, full, 0.5 + 1e-12 * u.index, {"overflows_fp16": u.name == "add_c"}) for u in units]
    assert [e.unit.name for e in sens.rank(tied[::-1])] == ["add_c", "conv_a", "conv_b"]  # equal to 1e-9 nats
    assert [e.unit.name for e in sens.rank([replace(e, node=None) for e in tied[::-1]])] == ["conv_a", "conv_b", "add_c"]


# ------------------------------------------------------------ planted faults


def test_int8_diagnose_ranks_the_hostile_layer_first(outlier_onnx, tmp_path):
    onnx_path, data = outlier_onnx
    result = diagnose(DiagnoseConfig(onnx=onnx_path, target=PrecisionTarget("int8", "ort"), calib_data=data / "train", data=data / "val",
                                     output=tmp_path / "report", calib_samples=32, reduce_range=True))
    first = result.ranking[0]
    assert first["module"] == HOSTILE and first["op"] == "Conv+Relu", result.ranking[:3]
    second = result.ranking[1]
    # Alone in INT8, the hostile layer does far more damage than any other unit.
    assert first["alone_low"]["kl"] > 10 * second["alone_low"]["kl"]
    assert first["alone_float"]["kl"] < result.document["all_low"]["kl"]
    doc = json.loads((tmp_path / "report" / "diagnose.json").read_text())
    assert doc["format"] == "tldeploy.diagnose" and doc["format_version"] == 1 and doc["images"]["n"] == 16
    assert [u["index"] for u in doc["units"]] == sorted(u["index"] for u in doc["units"])  # graph order
    md = (tmp_path / "report" / "diagnose.md").read_text()
    assert "`stages.2.0`" in md.split("\n| 1 |")[1].splitlines()[0]
    assert (tmp_path / "report" / "sensitivity.png").stat().st_size > 1000
    plan = load_plan(tmp_path / "report" / "plan.json")
    assert plan.units[0].module == HOSTILE and plan.precision == "int8"


def test_fp16_diagnose_ranks_the_overflowing_layer_first(trap_onnx, tmp_path):
    onnx_path, data = trap_onnx
    result = diagnose(DiagnoseConfig(onnx=onnx_path, target=PrecisionTarget("fp16", "ort"), data=data / "val", output=tmp_path / "r16"))
    first = result.ranking[0]
    assert first["module"] == "backbone.features.scale" and first["op"] == "Mul", result.ranking[:3]
    assert first["node"]["overflows_fp16"] and first["node"]["nonfinite_share"] > 0
    assert first["alone_low"]["nonfinite_rows"] > 0
    assert not any(u["node"]["overflows_fp16"] for u in result.ranking[1:] if u["module"].startswith("backbone.features.stem"))
    plan = result.document["plan"]
    assert plan["passed"] and result.ranking[0]["name"] in plan["units"]


# ------------------------------------------------------------ plans applied by build


def test_int8_guard_keeps_the_hostile_layer_in_float(outlier_onnx, tmp_path):
    onnx_path, data = outlier_onnx
    contract = read_contract(onnx_path)
    calib = CalibrationSet.from_folder(data / "train", contract.preprocessing, 32)
    check = ImageSet.from_folder(data / "val", contract.preprocessing, contract.classes)
    result = quantize_model(onnx_path, calib, QuantConfig.ort_x86(reduce_range=True), tmp_path / "c", check=check)
    assert result.history[0][1] == 0 and not result.acceptance.accepts(result.history[0][2])  # all-INT8 fails the bar
    assert result.passed and [u.module for u in result.float_units] == [HOSTILE]
    assert result.metrics.top1_agreement >= 0.99
    # The hostile conv reads float activations; the other two convs are quantized.
    producers = {o: n for n in result.model.graph.node for o in n.output}
    conv_inputs = {n.name: producers.get(n.input[0]) for n in result.model.graph.node if n.op_type == "Conv"}
    assert sum(p is not None and p.op_type == "DequantizeLinear" for p in conv_inputs.values()) == 2


def test_plan_round_trip_through_build(outlier_onnx, tmp_path, capsys):
    onnx_path, data = outlier_onnx
    rc = main(["diagnose", str(onnx_path), "--precision", "int8", "--calib-data", str(data / "train"), "--data", str(data / "val"),
               "-o", str(tmp_path / "d"), "--calib-samples", "32", "--reduce-range", "-q"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "stages.2.0" in out.splitlines()[0] and "wrote" in out
    plan = json.loads((tmp_path / "d" / "plan.json").read_text())
    artifact = tmp_path / "planned.int8.ort.onnx"
    rc = main(["build", str(onnx_path), "--precision", "int8", "--backend", "ort", "--calib-data", str(data / "train"),
               "--calib-samples", "32", "--reduce-range", "--precision-plan", str(tmp_path / "d" / "plan.json"),
               "--check-data", str(data / "val"), "-o", str(artifact), "-q"])
    assert rc == 0
    record = json.loads(artifact.with_name(artifact.name + ".json").read_text())
    q = record["quantization"]
    assert [u["name"] for u in q["float_units"]] == [u["name"] for u in plan["units"]]
    assert q["plan"] and record["precision_plan"]["path"].endswith("plan.json")
    # The build on the same images reaches what the plan promised (same calibration, same graph).
    assert record["check"]["top1_agreement"] >= plan["promised"]["top1_agreement"]
    assert record["check"]["kl"] == pytest.approx(plan["promised"]["kl"], rel=1e-6, abs=1e-9)


def test_fp16_plan_keeps_its_nodes_in_fp32(trap_onnx, tmp_path):
    from tldeploy.engines.fp16 import fp16_model

    onnx_path, data = trap_onnx
    result = diagnose(DiagnoseConfig(onnx=onnx_path, target=PrecisionTarget("fp16", "ort"), data=data / "val", output=tmp_path / "r"))
    plan = load_plan(result.plan_path)
    converted = fp16_model(onnx.load(str(onnx_path)), keep_fp32=plan.nodes)
    onnx.checker.check_model(converted)  # a valid ONNX: nodes in topological order, casts included
    inits = {i.name: i.data_type for i in converted.graph.initializer}
    for n in converted.graph.node:
        if n.name in plan.nodes:  # kept nodes read float32 weights
            assert all(inits.get(t, onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT for t in n.input[1:] if t in inits)
    assert any(t == onnx.TensorProto.FLOAT16 for t in inits.values())  # the rest is FP16


def test_a_plan_for_another_onnx_is_refused(outlier_onnx, tiny, tmp_path, capsys):
    onnx_path, data = outlier_onnx
    result = diagnose(DiagnoseConfig(onnx=onnx_path, target=PrecisionTarget("int8", "ort"), calib_data=data / "train", data=data / "val",
                                     output=tmp_path / "d", calib_samples=32, reduce_range=True))
    other = tmp_path / "other.onnx"
    other.write_bytes(tiny[1].read_bytes())
    with pytest.raises(ConfigError, match="was made for another ONNX"):
        build(BuildConfig(onnx=other, target=PrecisionTarget("int8", "ort"), calib_data=data / "train", precision_plan=result.plan_path))
    with pytest.raises(ConfigError, match="is a int8 plan"):
        build(BuildConfig(onnx=onnx_path, target=PrecisionTarget("fp16", "tensorrt"), precision_plan=result.plan_path))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    rc = main(["build", str(onnx_path), "--precision", "int8", "--backend", "ort", "--calib-data", str(data / "train"),
               "--precision-plan", str(bad)])
    err = capsys.readouterr().err
    assert rc != 0 and "bad.json is not a JSON precision plan" in err and "Traceback" not in err
    assert not (tmp_path / "outlier.int8.ort.onnx").exists()


def test_diagnose_bad_input(tiny, tmp_path, capsys):
    with pytest.raises(ConfigError, match="needs --calib-data"):  # a float-trained export (a QAT one needs none)
        diagnose(DiagnoseConfig(onnx=tiny[1], target=PrecisionTarget("int8", "ort"), data=tiny[2] / "val", output=tmp_path / "nocalib"))
    assert not (tmp_path / "nocalib").exists()
    rc = main(["diagnose", str(tmp_path / "missing.onnx"), "--precision", "fp16", "--data", str(tiny[2] / "val")])
    err = capsys.readouterr().err
    assert rc != 0 and "missing.onnx" in err and "Traceback" not in err
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "keep.txt").write_text("x")
    rc = main(["diagnose", str(tiny[1]), "--precision", "fp16", "--data", str(tiny[2] / "val"), "-o", str(tmp_path / "r")])
    assert rc != 0 and "--force" in capsys.readouterr().err and (tmp_path / "r" / "keep.txt").exists()



def test_a_diagnosis_names_its_target(tmp_path):
    """Build and diagnose share the precision target's rules; a diagnosis measures one named backend's numerics."""
    with pytest.raises(ConfigError, match="--backend must be one of ort, tensorrt, got 'auto'"):
        DiagnoseConfig(tmp_path / "m.onnx", PrecisionTarget("int8"), tmp_path / "val")
    with pytest.raises(ConfigError, match="--calib-data is for --precision int8"):
        DiagnoseConfig(tmp_path / "m.onnx", PrecisionTarget("fp16", "ort"), tmp_path / "val", calib_data=tmp_path)
    with pytest.raises(ConfigError, match="--precision must be one of fp16, int8"):
        DiagnoseConfig(tmp_path / "m.onnx", PrecisionTarget("fp32", "ort"), tmp_path / "val")


# ------------------------------------------------------------ both CPU classes' numerics


@pytest.mark.parametrize("vnni", [True, False])
def test_eight_bit_weights_are_checked_as_the_target_computes(vnni, monkeypatch):
    """reduce_range off computes exactly on a VNNI CPU; without VNNI ORT's kernels saturate, so the
    guard evaluates the Q/DQ graph as written. The switch, not the machine, decides."""
    import tldeploy.engines.quant_config as qmod

    monkeypatch.setattr(qmod, "cpu_has_vnni", lambda: vnni)
    assert QuantConfig.ort_x86().reduce_range is (not vnni)
    assert QuantConfig.ort_x86(reduce_range=False).evaluated_as_written is (not vnni)
    assert QuantConfig.ort_x86(reduce_range=True).evaluated_as_written is False
    assert QuantConfig.tensorrt().evaluated_as_written is True


def test_task_metrics_count_nonfinite_rows_as_disagreements():
    ref = np.array([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    out = np.array([[2.0, 0.0], [np.nan, 1.0], [0.0, 1.0]])
    m = task_metrics(ref, out)
    assert m.nonfinite == 1 and m.top1_agreement == pytest.approx(1 / 3) and np.isfinite(m.kl) and m.kl > 9
