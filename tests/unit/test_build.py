"""The build stage on the tiny registered backbone: capabilities, runners, ORT artifacts, INT8
Q/DQ structure per flavour, build records and reuse, bad input."""

import importlib.util
import json
import logging
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from tldeploy.cli import main
from tldeploy.contract import read_contract
from tldeploy.data.folders import load_image
from tldeploy.engines import builder
from tldeploy.engines.builder import BuildConfig, build
from tldeploy.engines.calibration import CalibrationSet
from tldeploy.engines.capabilities import CAPABILITIES, PrecisionTarget, capability_table, check_target
from tldeploy.engines.qdq import qdq_stats
from tldeploy.engines.quantize import Int8Options, QuantConfig, quantize_model
from tldeploy.engines.sensitivity import Acceptance
from tldeploy.errors import ConfigError, DataError, OutputExistsError, TldeployError
from tldeploy.models.checkpoints import load_checkpoint
from tldeploy.parity import Tolerance, compare_outputs, parity_inputs
from tldeploy.predict import predict
from tldeploy.runtime.loader import load_runner
from tldeploy.runtime.runners import OrtRunner, TorchRunner, run_batches
from tldeploy.scopes import module_paths

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
HOSTILE = "backbone.features.stages.2.0"  # reads the outlier channel planted in stage 1's output (outlier_onnx)


def _ort_has_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture
def model_copy(tiny, tmp_path):
    """The tiny ONNX in a fresh folder, so default outputs land there."""
    p = tmp_path / "tiny.onnx"
    p.write_bytes(tiny[1].read_bytes())
    return p


def _negate_classifier(model) -> None:
    """Negate the classifier's weight and bias in place: every logit flips sign, so the top-1 of a
    two-class model disagrees with the original on every input."""
    from onnx import numpy_helper

    paths = module_paths(model)
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm" and paths[n.name] == "head.classifier")
    for init in model.graph.initializer:
        if init.name in gemm.input[1:]:
            init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), init.name))


def _activation_scales(model) -> dict[str, float]:
    """{activation tensor: its QuantizeLinear scale} of a Q/DQ model."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.input[0]: float(inits[n.input[1]]) for n in model.graph.node if n.op_type == "QuantizeLinear"}


# ------------------------------------------------------------ capabilities


def test_capability_table_drives_validation():
    assert check_target("int8", "ort", "cpu").suffix == ".onnx"
    assert check_target("fp16", "tensorrt", "cuda").suffix == ".engine"
    with pytest.raises(ConfigError, match="ort on cpu cannot build fp16.*--backend tensorrt --device cuda"):
        check_target("fp16", "ort", "cpu")
    with pytest.raises(ConfigError, match="cuda cannot build int8"):
        check_target("int8", "ort", "cuda")
    with pytest.raises(ConfigError, match="runs on --device cuda"):
        check_target("fp32", "tensorrt", "cpu")
    table = capability_table()
    assert all(c.note in table for c in CAPABILITIES)


def test_a_precision_target_is_checked_where_it_is_named():
    assert PrecisionTarget("int8", "ort", "cpu").capability.suffix == ".onnx"
    with pytest.raises(ConfigError, match="ort on cpu cannot build fp16"):
        PrecisionTarget("fp16", "ort", "cpu")
    with pytest.raises(ConfigError, match="--backend must be one of auto, tensorrt, ort"):
        PrecisionTarget("fp32", "onnx")
    auto = PrecisionTarget("fp16")  # backend auto, device default: checked once the build resolves them
    assert auto.resolved("tensorrt").capability.device == "cuda"
    with pytest.raises(ConfigError, match="ort on cpu cannot build fp16"):
        auto.resolved("ort")
    with pytest.raises(ConfigError, match="--calib-data is for --precision int8; fp16 needs no calibration"):
        auto.check_calib_data(Path("data"))


def test_int8_options_take_the_flavour_of_the_resolved_backend():
    opts = Int8Options.from_cli(keep_float="2", calib_method="entropy", reduce_range=True)
    assert opts.keep_float == 2
    trt, ort = opts.quant_config("tensorrt"), opts.quant_config("ort")
    assert trt.flavour == "tensorrt" and not trt.reduce_range and trt.options is opts  # TensorRT has no 7-bit weights
    assert ort.flavour == "ort-x86" and ort.reduce_range and ort.options is opts
    with pytest.raises(ConfigError, match="--int8-keep-float must be 'auto' or a number"):
        Int8Options.from_cli(keep_float="some")


def test_presets_follow_the_target():
    trt = QuantConfig.tensorrt()
    assert (trt.activation_type, trt.activation_symmetric, trt.per_channel, trt.reduce_range) == ("int8", True, True, False)
    ort = QuantConfig.ort_x86(reduce_range=True)
    assert (ort.activation_type, ort.activation_symmetric, ort.per_channel) == ("uint8", False, True)
    with pytest.raises(ConfigError, match="symmetric signed INT8"):
        QuantConfig(flavour="tensorrt", activation_type="uint8", activation_symmetric=False, per_channel=True, reduce_range=False)
    with pytest.raises(ConfigError, match="--calib-method"):
        QuantConfig.ort_x86(calib_method="mse")
    with pytest.raises(ConfigError, match="--int8-keep-float"):
        QuantConfig.ort_x86(keep_float=-1)


# ------------------------------------------------------------ runners


def test_runners_share_one_interface_and_agree(tiny):
    ckpt, onnx_path, data = tiny
    x = parity_inputs(read_contract(onnx_path).preprocessing, data / "val", 16)
    outs = {}
    for runner in (TorchRunner(ckpt), OrtRunner(onnx_path)):
        with runner:
            spec = runner.input_spec()["images"]
            assert spec.shape[0] is None and spec.shape[1:] == (3, 32, 32) and spec.dtype == np.float32
            outs[runner.name] = run_batches(runner, x, batch=5)
        assert not runner.is_active
    ref, test = outs.values()
    report = compare_outputs(ref, test, tolerance=Tolerance(max_logit_diff=1e-4, min_top1_agreement=1.0))
    assert report, report.table()


def test_runner_checks_inputs(tiny):
    runner = OrtRunner(tiny[1])
    x = np.zeros((2, 3, 32, 32), np.float32)
    with pytest.raises(TldeployError, match="not active"):
        runner.infer({"images": x})
    with runner:
        with pytest.raises(TldeployError, match=r"expected inputs \['images'\]"):
            runner.infer({"input": x})
        with pytest.raises(TldeployError, match="must be float32, got float64"):
            runner.infer({"images": x.astype(np.float64)})
        with pytest.raises(TldeployError, match="must have shape Nx3x32x32, got 2x3x16x16"):
            runner.infer({"images": np.zeros((2, 3, 16, 16), np.float32)})
        assert runner.infer({"images": x})["probs"].shape == (2, 2)


def test_load_runner_by_suffix(tiny, tmp_path, capsys):
    assert isinstance(load_runner(tiny[0]), TorchRunner)
    assert isinstance(load_runner(tiny[1]), OrtRunner)
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(ConfigError, match="expected .pt, .onnx or .engine"):
        load_runner(tmp_path / "m.txt")
    # One rule and one message wherever an artifact is named: the contract reader and bench too.
    from tldeploy.runtime.runners import artifact_contract

    with pytest.raises(ConfigError, match="cannot tell what .*m.txt is from its suffix; expected .pt, .onnx or .engine"):
        artifact_contract(tmp_path / "m.txt")
    assert main(["bench", str(tmp_path / "m.txt"), "-o", str(tmp_path / "b.json")]) == 1
    assert "cannot tell what" in capsys.readouterr().err and not (tmp_path / "b.json").exists()


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here: the missing-TensorRT message cannot be shown")
def test_engine_without_tensorrt_names_the_extra(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not an engine")
    with pytest.raises(TldeployError, match="tensorrt is not installed.*tldeploy\\[tensorrt\\]"):
        with load_runner(engine):
            pass


# ------------------------------------------------------------ ORT builds and records


def test_fp32_build_record_reuse_and_force(model_copy):
    first = build(BuildConfig(onnx=model_copy, target=PrecisionTarget(backend="ort")))
    assert first.path == model_copy.with_name("tiny.fp32.ort.onnx") and not first.reused
    record = json.loads(Path(str(first.path) + ".json").read_text())
    for key in ("input_onnx_sha256", "artifact_sha256", "precision", "backend", "device", "tools", "cache_key", "contract"):
        assert key in record
    assert record["precision"] == "fp32" and record["backend"] == "ort" and record["device"] == "cpu"
    assert record["tools"]["onnxruntime"]
    # The artifact is a byte copy of its input, so agreement is 1.0 by construction; what is worth
    # checking is that the check ran at all (test_fp32_build_checks_the_artifact_it_wrote shows it
    # sees the file written).
    assert record["check"]["against"] == "fp32 onnx on onnxruntime cpu" and record["check"]["images"] == "random inputs"
    assert record["check"]["n"] == 8 and record["check"]["top1_agreement"] == 1.0
    again = build(BuildConfig(onnx=model_copy, target=PrecisionTarget(backend="ort")))
    assert again.reused and again.record.cache_key == record["cache_key"]
    # Different input, same output: never silently reused, never silently overwritten.
    other = model_copy.with_name("other.onnx")
    m = onnx.load(str(model_copy))
    m.doc_string = "changed"
    onnx.save(m, str(other))
    with pytest.raises(OutputExistsError, match="differs in: input_onnx_sha256.*--force"):
        build(BuildConfig(onnx=other, target=PrecisionTarget(backend="ort"), output=first.path))
    forced = build(BuildConfig(onnx=other, target=PrecisionTarget(backend="ort"), output=first.path, force=True))
    assert not forced.reused and forced.record.input_onnx_sha256 != record["input_onnx_sha256"]
    # A tampered artifact is not "up to date".
    first.path.write_bytes(first.path.read_bytes() + b"\0")
    with pytest.raises(OutputExistsError):
        build(BuildConfig(onnx=other, target=PrecisionTarget(backend="ort"), output=first.path))
    # A broken record is named; --force rebuilds over it.
    Path(str(first.path) + ".json").write_text("{not json")
    with pytest.raises(TldeployError, match="unreadable.*--force"):
        build(BuildConfig(onnx=other, target=PrecisionTarget(backend="ort"), output=first.path))
    assert not build(BuildConfig(onnx=other, target=PrecisionTarget(backend="ort"), output=first.path, force=True)).reused


def test_build_record_names_the_jetpack_release(model_copy, tmp_path, monkeypatch):
    """On a Jetson the record says which JetPack (and L4T) the artifact was built under; it is
    information, not part of the cache key (TensorRT's version and the GPU are)."""
    from tldeploy.runtime import host

    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025\n")
    monkeypatch.setattr(host, "NV_TEGRA_RELEASE", release)
    first = build(BuildConfig(onnx=model_copy, target=PrecisionTarget(backend="ort")))
    assert first.record.jetson == {"l4t": "36.4.3", "jetpack": "6.2"}
    assert json.loads(Path(str(first.path) + ".json").read_text())["jetson"] == {"l4t": "36.4.3", "jetpack": "6.2"}
    monkeypatch.setattr(host, "NV_TEGRA_RELEASE", tmp_path / "absent")  # the same build seen from a machine that is no Jetson
    assert build(BuildConfig(onnx=model_copy, target=PrecisionTarget(backend="ort"))).reused


def test_fp32_build_checks_the_artifact_it_wrote(model_copy, tiny, monkeypatch):
    """The build's own check runs the file it wrote (before it takes the output's name) against the
    FP32 ONNX on the --check-data images: an honest copy agrees everywhere, a copy corrupted on its
    way to disk nowhere."""
    val = tiny[2] / "val"
    n_val = sum(1 for _ in val.rglob("*.png"))
    honest = build(BuildConfig(onnx=model_copy, target=PrecisionTarget(backend="ort"), check_data=val)).record.check
    assert honest["images"] == f"--check-data images from {val}" and honest["n"] == n_val > 0
    assert honest["top1_agreement"] == 1.0 and honest["logits_max_abs"] == 0.0

    from tldeploy import scopes

    real = scopes.save_portable

    def corrupting(source, target, model=None):
        real(source, target, model=model)
        m = onnx.load(str(target))
        _negate_classifier(m)
        onnx.save(m, str(target))

    monkeypatch.setattr(scopes, "save_portable", corrupting)
    bad = build(BuildConfig(onnx=model_copy, target=PrecisionTarget(backend="ort"), check_data=val, output=model_copy.with_name("bad.onnx")))
    assert bad.record.check["n"] == n_val and bad.record.check["top1_agreement"] == 0.0, bad.record.check


def test_a_build_whose_input_or_artifact_fails_leaves_nothing(model_copy, tmp_path, capsys, monkeypatch):
    """Tried as a new user would: an input the checker rejects is named in one line before
    anything is written, and an artifact its runtime cannot load is not left in place."""
    from tldeploy.cli import main

    broken = onnx.load(str(model_copy))
    broken.graph.node[0].input[0] = "no_such_tensor"  # a dangling edge: onnx.checker rejects it
    bad_in = tmp_path / "broken.onnx"
    onnx.save(broken, str(bad_in))
    out = tmp_path / "broken.fp32.onnx"
    assert main(["build", str(bad_in), "--precision", "fp32", "--backend", "ort", "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad_in} fails onnx.checker") and "re-export it" in err and len(err.splitlines()) == 1, err
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))

    def runtime_refuses(*args, **kwargs):
        raise TldeployError("onnxruntime could not load the artifact")

    monkeypatch.setattr(builder, "_check", runtime_refuses)
    assert main(["build", str(model_copy), "--precision", "fp32", "--backend", "ort", "-o", str(out)]) == 1
    assert "could not load the artifact" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


def _zero_points(model, weights: bool):
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and (n.input[0] in inits) == weights and len(n.input) > 2:
            zp = inits[n.input[2]]
            if zp.dtype != np.int32:
                out.append(zp)
    return out


def test_int8_ort_flavour_structure_and_accuracy(model_copy, tiny):
    result = build(BuildConfig(onnx=model_copy, target=PrecisionTarget("int8", "ort"), calib_data=tiny[2] / "train",
                               int8=Int8Options(calib_samples=32, reduce_range=True)))
    model = onnx.load(str(result.path))
    convs = [n for n in onnx.load(str(model_copy)).graph.node if n.op_type == "Conv"]  # the tiny CNN's head has none
    stats = qdq_stats(model)
    q = result.record.quantization
    quantized_convs = len(convs) - sum(u["op"].startswith("Conv") for u in q["float_units"])
    assert quantized_convs >= 1
    # One DQ per weight and bias of each quantized conv, plus activation Q/DQ pairs.
    assert stats.dequantize >= 2 * quantized_convs + stats.quantize and stats.quantize >= 1
    assert stats.activation_zero_point_types == ["uint8"] and stats.weight_zero_point_types == ["int8"]
    assert all(not zp.any() for zp in _zero_points(model, weights=True))  # symmetric weights
    assert stats.per_channel_weights == quantized_convs
    # The CAM head and the softmax stay float: nothing quantized feeds them.
    producers = {o: n for n in model.graph.node for o in n.output}
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    assert producers[softmax.input[0]].op_type != "DequantizeLinear"
    assert not any(n.op_type == "DequantizeLinear" and n.output[0] in g.input for g in model.graph.node
                   if g.op_type == "Gather" for n in model.graph.node)
    assert read_contract(result.path).precision == "int8"
    assert result.record.qdq_flavour == "ort-x86" and result.record.calibration["images"] == 32
    with load_runner(result.path) as r:
        x = parity_inputs(read_contract(model_copy).preprocessing, tiny[2] / "val", 16)
        assert run_batches(r, x)["probs"].shape == (16, 2)
    assert result.record.check == q["check"] and q["check"]["images"].startswith("32 held-out calibration-folder images")
    assert q["check"]["top1_agreement"] == q["search"][-1]["top1_agreement"] or not q["check"]["passed"]


def test_int8_tensorrt_flavour_is_symmetric_signed(tiny, tmp_path):
    prep = read_contract(tiny[1]).preprocessing
    calib = CalibrationSet.from_folder(tiny[2] / "train", prep, 32)
    assert len(calib.images) == 32 and len(calib.holdout) == 32
    result = quantize_model(tiny[1], calib, QuantConfig.tensorrt(keep_float=0), tmp_path / "c")
    stats = qdq_stats(result.model)
    assert stats.activation_zero_point_types == ["int8"] and stats.weight_zero_point_types == ["int8"]
    assert stats.all_zero_points_zero  # TensorRT: zero points 0 everywhere
    convs = [n for n in onnx.load(str(tiny[1])).graph.node if n.op_type == "Conv"]
    assert stats.per_channel_weights == len(convs) and result.float_units == []
    assert len(list((tmp_path / "c").glob("calib-*.json"))) == 1


def test_second_build_reads_the_cached_ranges(model_copy, tiny):
    """Doubling every cached range doubles every activation scale of the next build: it read the
    cache instead of calibrating again."""
    from tldeploy.engines.artifacts import cache_dir

    cfg = BuildConfig(onnx=model_copy, target=PrecisionTarget("int8", "ort"), calib_data=tiny[2] / "train",
                      int8=Int8Options(calib_samples=32, keep_float=0, reduce_range=True))
    first = build(cfg)
    before = _activation_scales(onnx.load(str(first.path)))
    (cache,) = (cache_dir() / "calibration").glob("calib-*.json")
    doc = json.loads(cache.read_text())
    for rng in doc["data"].values():
        for side in ("lowest", "highest"):
            rng[side]["data"] = [2 * v for v in rng[side]["data"]]
    cache.write_text(json.dumps(doc))
    second = build(replace(cfg, force=True))
    after = _activation_scales(onnx.load(str(second.path)))
    assert before and set(after) == set(before)
    for name, scale in before.items():
        assert after[name] == pytest.approx(2 * scale, rel=1e-5), name
    assert list((cache_dir() / "calibration").glob("calib-*.json")) == [cache]


# ------------------------------------------------------------ the INT8 guard's search


def test_int8_guard_steps_until_the_bar_is_met(outlier_onnx, tmp_path):
    """The fully quantized outlier model misses the default held-out bar (measured here, in the
    record's search); the guard keeps units in float one at a time and stops at the first mix that
    passes: the planted layer alone."""
    src, data = outlier_onnx
    path = tmp_path / "outlier.onnx"
    path.write_bytes(src.read_bytes())
    result = build(BuildConfig(onnx=path, target=PrecisionTarget("int8", "ort"), calib_data=data / "train", int8=Int8Options(calib_samples=32, reduce_range=True)))
    q = result.record.quantization
    crit = q["check"]["criterion"]
    accept = Acceptance(Tolerance(min_top1_agreement=crit["min_top1_agreement"], max_kl=crit["max_kl"]), crit["images"])

    def passes(h):
        return h["top1_agreement"] >= accept.tolerance.min_top1_agreement and h["kl"] <= accept.tolerance.max_kl

    search = q["search"]
    assert search[0]["float_units"] == 0 and not passes(search[0]), "premise: full INT8 misses the bar"
    assert q["check"]["passed"] and [u["module"] for u in q["float_units"]] == [HOSTILE]
    assert passes(search[-1]) and search[-1]["float_units"] == 1
    assert all(not passes(h) for h in search[:-1])  # it stopped at the first pass
    assert result.record.check["top1_agreement"] == search[-1]["top1_agreement"]
    # The artifact has that layer in float: no input of its nodes is dequantized.
    model = onnx.load(str(result.path))
    producers = {o: n for n in model.graph.node for o in n.output}
    floated = set(q["float_units"][0]["nodes"])
    reads_dq = {n.name for n in model.graph.node
                if any(t in producers and producers[t].op_type == "DequantizeLinear" for t in n.input)}
    assert floated and not floated & reads_dq
    assert any(n.op_type == "Conv" for n in model.graph.node if n.name in reads_dq)  # the others stay INT8


def test_int8_guard_keeps_the_best_mix_when_the_bar_is_out_of_reach(outlier_onnx, tmp_path, caplog):
    """KL <= 0 cannot be met while any unit is INT8, and max_keep_float=1 keeps one quantized: the
    search gives up at the limit, warns, and keeps the mix with the lowest KL it measured."""
    onnx_path, data = outlier_onnx
    calib = CalibrationSet.from_folder(data / "train", read_contract(onnx_path).preprocessing, 32)
    cfg = QuantConfig.ort_x86(reduce_range=True, min_agreement=1.0, max_kl=0.0, max_keep_float=1)
    with caplog.at_level(logging.WARNING, logger="tldeploy"):
        result = quantize_model(onnx_path, calib, cfg, tmp_path / "c")
    kls = [m.kl for _, _, m in result.history]
    assert all(kl > 0 for kl in kls), "premise: every mix with an INT8 unit has some KL"
    assert max(k for _, k, _ in result.history) == 1 and len(result.history) >= 3
    assert not result.passed and "INT8 stayed short of" in caplog.text
    best = int(np.argmin(kls))
    assert 0 < best < len(kls) - 1, f"premise: the best mix is neither the first nor the last tried ({kls})"
    assert result.metrics == result.history[best][2]
    assert [u.module for u in result.float_units] == [HOSTILE]


def test_int8_keep_float_count_takes_the_most_sensitive_units(tiny, tmp_path):
    prep = read_contract(tiny[1]).preprocessing
    calib = CalibrationSet.from_folder(tiny[2] / "train", prep, 32)
    result = quantize_model(tiny[1], calib, QuantConfig.ort_x86(reduce_range=True, keep_float=2), tmp_path / "c")
    assert len(result.float_units) == 2 and result.history[0][:2] == ("ranked", 2)
    floated = {n for u in result.float_units for n in u.nodes}
    producers = {o: n for n in result.model.graph.node for o in n.output}
    for n in result.model.graph.node:
        if n.name in floated:  # their inputs are not dequantized
            assert not any(producers.get(t) is not None and producers[t].op_type == "DequantizeLinear" for t in n.input)


# ------------------------------------------------------------ bad input


def test_bad_build_requests(model_copy, tiny, tmp_path):
    with pytest.raises(ConfigError, match="--precision int8 needs --calib-data"):  # a float-trained export (QAT ones need none)
        build(BuildConfig(onnx=model_copy, target=PrecisionTarget("int8", "ort")))
    with pytest.raises(ConfigError, match="--calib-data is for --precision int8"):
        BuildConfig(onnx=model_copy, calib_data=tmp_path)
    with pytest.raises(ConfigError, match="should end in .onnx"):
        build(BuildConfig(onnx=model_copy, target=PrecisionTarget(backend="ort"), output=tmp_path / "x.engine"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="empty"):
        build(BuildConfig(onnx=model_copy, target=PrecisionTarget("int8", "ort"), calib_data=empty))
    with pytest.raises(TldeployError, match="does not exist"):
        build(BuildConfig(onnx=tmp_path / "missing.onnx", target=PrecisionTarget(backend="ort")))
    truncated = tmp_path / "t.onnx"
    truncated.write_bytes(model_copy.read_bytes()[:500])
    with pytest.raises(TldeployError, match="truncated"):
        build(BuildConfig(onnx=truncated, target=PrecisionTarget(backend="ort")))
    assert sorted(p.name for p in model_copy.parent.iterdir() if p.name.startswith("tiny.")) == ["tiny.onnx"]


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here: an fp16 engine may build")
def test_fp16_without_tensorrt_names_the_alternatives(model_copy):
    with pytest.raises(TldeployError, match="cannot build a TensorRT fp16 engine here.*--backend ort"):
        build(BuildConfig(onnx=model_copy, target=PrecisionTarget("fp16")))
    assert not list(model_copy.parent.glob("tiny.fp16*"))


def test_ort_cuda_without_onnxruntime_gpu_names_the_extra(model_copy):
    if _ort_has_cuda():
        pytest.skip("onnxruntime here has the CUDA provider: an ort cuda build may succeed")
    with pytest.raises(TldeployError, match="tldeploy\\[gpu\\]"):
        build(BuildConfig(onnx=model_copy, target=PrecisionTarget(backend="ort", device="cuda")))
    assert not list(model_copy.parent.glob("tiny.fp32.ort-cuda*"))


def test_few_calibration_images_warn(tiny, caplog):
    prep = read_contract(tiny[1]).preprocessing
    calib = CalibrationSet.from_folder(tiny[2] / "val", prep, 8)
    assert len(calib.images) == 8 and "calibrating on only 8 images" in caplog.text


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here: an fp16 engine may build")
def test_cli_fp16_without_tensorrt_is_one_line(model_copy, capsys):
    assert main(["build", str(model_copy), "--precision", "fp16"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "--backend ort" in err[0]


def test_cli_build_errors_are_one_line(model_copy, capsys):
    assert main(["build", str(model_copy), "--batch", "8,1,32", "--backend", "ort"]) != 0
    assert "--batch must be MIN,OPT,MAX" in capsys.readouterr().err


def test_predict_accepts_built_artifacts(model_copy, tiny):
    """A red image is called red by the PyTorch model itself (loaded and run here, outside
    predict) and by predict on the checkpoint, the ONNX file and the INT8 artifact alike."""
    ckpt, _, data = tiny
    result = build(BuildConfig(onnx=model_copy, target=PrecisionTarget("int8", "ort"), calib_data=data / "train", int8=Int8Options(calib_samples=32)))
    image = sorted((data / "val" / "red").iterdir())[0]
    model, meta = load_checkpoint(ckpt)
    prep = read_contract(model_copy).preprocessing
    with torch.no_grad():
        ref = torch.softmax(model(prep.eval_transform()(load_image(image))[None]), 1)[0].numpy()
    classes = meta["classes"]
    assert classes[int(ref.argmax())] == "red", "premise: the tiny model calls this red image red"
    for artifact, tol in ((ckpt, 1e-5), (model_copy, 1e-4), (result.path, 0.1)):
        top = predict(artifact, [image], top_k=2)[0].top
        assert top[0]["class"] == "red" and top[0]["index"] == classes.index("red"), (artifact, top)
        assert [t["class"] for t in top] == ["red", "green"] and top[0]["prob"] >= top[1]["prob"]
        for t in top:
            assert t["prob"] == pytest.approx(float(ref[t["index"]]), abs=tol), (artifact, t)


def test_racing_builds_leave_one_valid_artifact(model_copy, tmp_path):
    cmd = [sys.executable, "-m", "tldeploy", "build", str(model_copy), "--backend", "ort", "-q"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum("up to date" in o for o, _ in outs) == 1
    artifact = model_copy.with_name("tiny.fp32.ort.onnx")
    with OrtRunner(artifact) as r:
        assert r.infer({"images": np.zeros((1, 3, 32, 32), np.float32)})["logits"].shape == (1, 2)
    assert not list(model_copy.parent.glob(".*.tmp"))


def test_sort_topologically_orders_producers_first_and_refuses_cycles():
    from onnx import TensorProto, helper

    from tldeploy.engines.graph import sort_topologically

    def graph(*nodes):
        return helper.make_graph(list(nodes), "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                 [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])])

    relu = helper.make_node("Relu", ["x"], ["y"], name="relu")
    neg = helper.make_node("Neg", ["x"], ["w"], name="neg")
    add = helper.make_node("Add", ["y", "w"], ["z"], name="add")
    g = graph(add, neg, relu)  # the consumer first, as a converter appending nodes leaves it
    sort_topologically(g)
    assert [n.name for n in g.node] == ["relu", "neg", "add"]  # producers in the order the consumer reads them
    onnx.checker.check_graph(g)
    g = graph(neg, relu, add)  # an order that is valid already is kept
    sort_topologically(g)
    assert [n.name for n in g.node] == ["neg", "relu", "add"]
    loop = graph(helper.make_node("Relu", ["z"], ["y"], name="a"), helper.make_node("Add", ["y", "x"], ["z"], name="b"))
    with pytest.raises(ValueError, match="cycle through node"):
        sort_topologically(loop)
