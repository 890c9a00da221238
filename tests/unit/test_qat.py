"""Quantization-aware training: the fake-quantized PyTorch model computes what the Q/DQ graph
computes (both flavours, a CNN and a ViT), and the QAT checkpoint flows through export and build
with its trained ranges, refusing what would not compute what it trained."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import onnx
import pytest
import torch
from _images import make_blob_images
from _qat import codes_side_by_side

from tldeploy.cli import main
from tldeploy.contract import read_contract
from tldeploy.engines.builder import BuildConfig, build
from tldeploy.engines.calibration import CalibrationSet
from tldeploy.engines.capabilities import PrecisionTarget
from tldeploy.engines.diagnose import DiagnoseConfig, diagnose
from tldeploy.engines.quant_config import Int8Options, QatRecord, QuantConfig, read_ranges
from tldeploy.engines.quantize import transformer_preset
from tldeploy.engines.quantizer import Quantizer
from tldeploy.errors import ConfigError, DataError, OutputExistsError
from tldeploy.export.onnx_export import ExportConfig, export_onnx
from tldeploy.modalities.preprocessing import AugmentConfig
from tldeploy.models.checkpoints import load_checkpoint
from tldeploy.qat import QatConfig, qat
from tldeploy.qat.fakequant import FakeQuantModel, LearnableFakeQuant, weight_scale
from tldeploy.qat.placement import find_placement
from tldeploy.qat.run import better_epoch, param_groups
from tldeploy.train.training import TrainConfig, train

CONFIGS = {"ort-x86 8-bit": lambda: QuantConfig.ort_x86(reduce_range=False),
           "ort-x86 7-bit": lambda: QuantConfig.ort_x86(reduce_range=True),
           "tensorrt": QuantConfig.tensorrt}


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    """(checkpoint, exported ONNX, data) of tiny_vit fine-tuned briefly on blob images."""
    root = tmp_path_factory.mktemp("qatvit")
    make_blob_images(root / "data" / "train", 40, seed=0)
    make_blob_images(root / "data" / "val", 8, seed=1)
    ckpt = train(TrainConfig(data=root / "data", out_dir=root / "run", backbone="tiny_vit", mode="finetune", epochs=2, warmup_epochs=1,
                             batch_size=8, lr=1e-2, quiet=True, augment=AugmentConfig.off())).checkpoint
    return ckpt, export_onnx(ExportConfig(ckpt, root / "vit.onnx")).path, root / "data"


def _simulated(ckpt, onnx_path, data, cfg, tmp_path, learn_clip=False):
    contract = read_contract(onnx_path)
    calib = CalibrationSet.from_folder(data / "train", contract.preprocessing, 64)
    model, _ = load_checkpoint(ckpt)
    with Quantizer(onnx_path, calib, cfg, tmp_path / "cache") as q:
        graph = q.mix(sorted(transformer_preset(q.units())))
        placement = find_placement(model, q.float_model, graph, read_ranges(q.cache), calib.images[:4], cfg)
        return FakeQuantModel(model, placement, learn_clip).eval(), graph, calib.holdout[:16], placement


# Measured (AMD EPYC avx512-vnni): every code equal or one step apart (once two, in the ViT's
# second block); the share off by one at any quantizer at most 0.19% for the CNN, 3.2% for the ViT
# (float sums in another order land on the other side of a rounding boundary, and the ViT's bias
# Adds and LayerNorms are float, so such flips pass on). The bounds leave room for other CPUs' sums.
BOUNDS = {"tiny": (2, 0.01), "vit": (2, 0.08)}


@pytest.mark.parametrize("flavour", list(CONFIGS))
@pytest.mark.parametrize("backbone", ["tiny", "vit"])
def test_the_fake_quantized_model_computes_the_written_qdq_graph(backbone, flavour, tiny, vit, tmp_path):
    ckpt, onnx_path, data = tiny if backbone == "tiny" else vit
    fq, graph, images, placement = _simulated(ckpt, onnx_path, data, CONFIGS[flavour](), tmp_path)
    n_q = sum(n.op_type == "QuantizeLinear" for n in graph.graph.node)
    assert len(placement.activations) == n_q > 0  # every activation quantizer of the graph is simulated
    assert len(placement.weights) == sum(n.op_type in ("Conv", "MatMul") and "backbone" in n.input[1] for n in graph.graph.node
                                         if len(n.input) > 1) or backbone == "vit"
    diffs, sim, written = codes_side_by_side(fq, graph, images)
    most, share = BOUNDS[backbone]
    assert max(int(d.max()) for d in diffs.values()) <= most
    assert max(float((d > 0).mean()) for d in diffs.values()) <= share
    assert (sim.argmax(1) == written.argmax(1)).all()


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("qrange", [(0, 255, 37.0), (-127, 127, 0.0)])  # uint8 with a zero point; symmetric int8
def test_the_learnable_fake_quant_computes_pytorchs_values_and_gradients(qrange, channels_last):
    qmin, qmax, zp = qrange
    torch.manual_seed(0)
    x = torch.randn(4, 8, 10, 10) * 3  # a fifth of it clipped at scale 0.05
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(x)
    results = []
    for op in (torch._fake_quantize_learnable_per_tensor_affine, LearnableFakeQuant.apply):
        xi, s, z = x.clone().requires_grad_(True), torch.tensor([0.05], requires_grad=True), torch.tensor([zp], requires_grad=True)
        y = op(xi, s, z, qmin, qmax, 0.3)
        (y * g).sum().backward()
        results.append((y.detach(), xi.grad, s.grad, z.grad))
    (y0, dx0, ds0, dz0), (y1, dx1, ds1, dz1) = results
    assert torch.equal(y0, y1) and torch.equal(dx0, dx1)
    torch.testing.assert_close(ds1, ds0, rtol=1e-5, atol=1e-4)  # sums in another order
    torch.testing.assert_close(dz1, dz0, rtol=1e-5, atol=1e-6)


def test_a_learnt_weight_clip_is_the_scale_the_build_writes(tiny, tmp_path):
    """Clipping every weight channel below its largest magnitude (what --clip-lr learns) and then
    `project`ing changes nothing the simulation computes, and the build, which derives each scale
    from the largest magnitude, writes the simulation's scales and codes."""
    from onnx import numpy_helper

    from tldeploy.models.checkpoints import load_checkpoint_and_tensors, save_checkpoint

    ckpt, onnx_path, data = tiny
    cfg = CONFIGS["ort-x86 7-bit"]()
    fq, _, images, placement = _simulated(ckpt, onnx_path, data, cfg, tmp_path, learn_clip=True)
    x = torch.from_numpy(images)
    with torch.no_grad():
        for q in fq.weight_quantizers:
            q.clip.fill_(0.7)
        before = fq(x)
        fq.project_weights()
        after = fq(x)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    _, meta, tensors = load_checkpoint_and_tensors(ckpt)
    save_checkpoint(tmp_path / "clipped.pt", fq.model, meta, tensors)
    clipped = export_onnx(ExportConfig(tmp_path / "clipped.pt", tmp_path / "clipped.onnx")).path
    calib = CalibrationSet.from_folder(data / "train", read_contract(clipped).preprocessing, 16)
    with Quantizer(clipped, calib, cfg, tmp_path / "cache2") as q:
        graph = q.mix([])
    inits = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer}
    dq = {n.output[0]: n for n in graph.graph.node if n.op_type == "DequantizeLinear"}
    nodes = {n.name: n for n in graph.graph.node}
    assert len(placement.weights) > 0
    for site, wq in zip(placement.weights, fq.weight_quantizers, strict=True):
        w = fq.model.get_submodule(site.module).weight
        folded = wq._folded(w).detach()
        scale = weight_scale(wq._clip(folded), site.qmin, site.qmax)
        written = dq[nodes[site.node].input[1]]
        torch.testing.assert_close(torch.from_numpy(inits[written.input[1]]).reshape(-1), scale, rtol=1e-6, atol=0)
        codes = torch.round(folded / scale.reshape(-1, *([1] * (w.dim() - 1))))
        off = (codes.numpy().reshape(inits[written.input[0]].shape) != inits[written.input[0]]).mean()
        assert off <= 0.001, (site.node, off)  # a fold in another float order may round one code the other way


def test_each_quantized_weight_learns_in_its_own_code_steps(tiny, tmp_path):
    """--step-lr: a quantized weight's learning rate is its mean code step (before the BatchNorm
    fold, where the weight lives) times --step-lr; every other parameter learns at --lr."""
    ckpt, onnx_path, data = tiny
    fq, _, _, _ = _simulated(ckpt, onnx_path, data, CONFIGS["ort-x86 7-bit"](), tmp_path, learn_clip=True)
    weights = {id(p): q for p, q in fq.quantized_weights()}
    others = [p for p in fq.model.parameters() if id(p) not in weights]
    assert weights and others
    for step_lr in (2e-3, 0.0):
        groups = param_groups(fq, QatConfig(ckpt, data / "train", data / "val", tmp_path / "o", lr=1e-5, step_lr=step_lr, clip_lr=1e-3))
        lrs = {id(p): g["lr"] for g in groups for p in g["params"]}
        assert len(lrs) == sum(len(g["params"]) for g in groups)  # each parameter in one group
        for p in fq.model.parameters():
            q = weights.get(id(p))
            if q is None or not step_lr:
                assert lrs[id(p)] == 1e-5
                continue
            fold = q._fold()
            unfolded = weight_scale(q.start, q.site.qmin, q.site.qmax) / (fold.detach().abs() if fold is not None else 1.0)
            assert lrs[id(p)] == pytest.approx(step_lr * float(unfolded.mean()), rel=1e-6)
        assert {lrs[id(q.clip)] for q in fq.weight_quantizers} == {1e-3}
    folded = next(q for q in weights.values() if q._fold() is not None)
    before = folded.step()
    with torch.no_grad():
        folded._bn[0].weight[0] = 0.0  # a channel switched off (a zero-initialised BatchNorm scale): its step is infinite
        expected = weight_scale(folded.start, folded.site.qmin, folded.site.qmax)[1:] / folded._fold()[1:].abs()
    assert folded.step() == pytest.approx(float(expected.mean()), rel=1e-6) and folded.step() < 10 * before


def test_an_epoch_wins_by_agreement_then_by_kl_then_by_accuracy():
    def row(agreement, kl, accuracy):
        return {"top1_agreement": agreement, "kl": kl, "accuracy": accuracy}

    assert better_epoch(row(0.99, 0.02, 0.90), row(0.98, 0.001, 0.99))
    assert better_epoch(row(0.99, 0.008, 0.96), row(0.99, 0.024, 0.97))  # a tie in agreement: the closer distribution
    assert better_epoch(row(0.99, 0.01, 0.97), row(0.99, 0.01, 0.96))
    assert not better_epoch(row(0.99, 0.01, 0.97), row(0.99, 0.01, 0.97))  # equal: the earlier epoch stays


def test_the_vit_placement_quantizes_inside_the_attention(vit, tmp_path):
    ckpt, onnx_path, data = vit
    _, _, _, placement = _simulated(ckpt, onnx_path, data, CONFIGS["ort-x86 8-bit"](), tmp_path)
    sites = [a.site for a in placement.activations]
    assert sum(s.endswith(".q") for s in sites) == sum(s.endswith(".k") for s in sites) == 2  # both blocks' query and key
    softmax = [r for r in placement.ranges if r.fixed]
    assert len(softmax) == 2 and all((r.lo, r.hi) == (0.0, 1.0) for r in softmax)  # the writer fixes [0, 1]: not learnt
    assert {w.module.rsplit(".", 1)[-1] for w in placement.weights} == {"proj", "qkv", "fc1", "fc2"}


@pytest.fixture(scope="module")
def qat_run(tiny, tmp_path_factory):
    ckpt, _, data = tiny
    out = tmp_path_factory.mktemp("qat") / "run"
    return qat(QatConfig(ckpt, data / "train", data / "val", out, epochs=1, quiet=True, reduce_range=False)), data


def test_qat_writes_a_checkpoint_whose_build_writes_the_trained_scales(qat_run, tmp_path):
    result, data = qat_run
    assert sorted(p.name for p in result.checkpoint.parent.iterdir()) == ["metrics.json", "model.pt"]
    _, meta = load_checkpoint(result.checkpoint)
    record = QatRecord.from_dict(meta["qat"], "test")
    assert record.flavour == "ort-x86" and not record.reduce_range and record.info["best_epoch"] in (0, 1)
    assert result.metrics["scales_differing_from_simulation"] == 0
    assert [h["epoch"] for h in result.metrics["history"]] == [0, 1]

    onnx_path = export_onnx(ExportConfig(result.checkpoint, tmp_path / "qat.onnx")).path
    assert QatRecord.from_contract(read_contract(onnx_path), "x") == record
    built = build(BuildConfig(onnx_path, PrecisionTarget("int8", "ort"), int8=Int8Options(reduce_range=False), check_data=data / "val", output=tmp_path / "q.onnx"))
    q = built.record.quantization
    assert q["calibration"] is None and q["qat"]["best_epoch"] == record.info["best_epoch"] and q["float_units"] == []
    assert built.record.calibration is None and q["check"]["top1_agreement"] == pytest.approx(result.metrics["qat"]["top1_agreement"])
    # The trained ranges are what was written: each activation scale as ONNX Runtime derives it from them.
    from onnx import numpy_helper

    from tldeploy.qat.fakequant import scale_zero_point
    from tldeploy.qat.placement import RangeSpec

    model = onnx.load(str(built.path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    checked = 0
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[1][: -len("_scale")] in record.ranges:
            lo, hi = record.ranges[n.input[1][: -len("_scale")]]
            scale, zp = scale_zero_point(lo, hi, RangeSpec("x", lo, hi, 0, 255, False))
            assert float(inits[n.input[1]]) == pytest.approx(scale, rel=1e-6) and int(inits[n.input[2]]) == zp
            checked += 1
    assert checked == sum(n.op_type == "QuantizeLinear" for n in model.graph.node)


def test_a_qat_export_builds_without_calibration_and_refuses_another_target(qat_run, tmp_path, caplog):
    result, data = qat_run
    onnx_path = export_onnx(ExportConfig(result.checkpoint, tmp_path / "qat.onnx")).path
    with caplog.at_level("INFO", logger="tldeploy"):
        built = build(BuildConfig(onnx_path, PrecisionTarget("int8", "ort"), int8=Int8Options(reduce_range=False), calib_data=data / "train", output=tmp_path / "a.onnx"))
    assert "--calib-data" in caplog.text and "ignored" in caplog.text
    assert built.record.quantization["check"]["skipped"] and built.record.check["against"]  # parity on random inputs instead
    # diagnose ranks the units of the graph the build writes: from the trained ranges, even given calibration images.
    checked = build(BuildConfig(onnx_path, PrecisionTarget("int8", "ort"), int8=Int8Options(reduce_range=False), check_data=data / "val", output=tmp_path / "v.onnx"))
    report = diagnose(DiagnoseConfig(onnx_path, PrecisionTarget("int8", "ort"), data / "val", calib_data=data / "train", reduce_range=False, output=tmp_path / "d",
                                     rank_images=8, max_units=1))
    q = report.document["quantization"]
    assert q["qat"] and q["calibration"] is None and q["flavour"] == "ort-x86" and not q["reduce_range"]
    assert report.document["all_low"]["kl"] == pytest.approx(checked.record.quantization["check"]["kl"], rel=1e-6)
    with pytest.raises(ConfigError, match=r"trained for ort-x86, not tensorrt"):
        diagnose(DiagnoseConfig(onnx_path, PrecisionTarget("int8", "tensorrt"), data / "val", output=tmp_path / "d2"))
    assert not (tmp_path / "d2").exists()
    with pytest.raises(ConfigError, match=r"trained for ort-x86, not ort-x86 with 7-bit weights; build it with --backend ort --no-reduce-range"):
        build(BuildConfig(onnx_path, PrecisionTarget("int8", "ort"), int8=Int8Options(reduce_range=True), output=tmp_path / "b.onnx"))
    with pytest.raises(ConfigError, match=r"trained for ort-x86, not tensorrt"):
        build(BuildConfig(onnx_path, PrecisionTarget("int8", "tensorrt"), output=tmp_path / "c.engine"))
    assert not (tmp_path / "b.onnx").exists()


def test_qat_refuses_bad_input_in_one_line_and_writes_nothing(qat_run, tiny, vit, tmp_path, capsys):
    result, data = qat_run
    ckpt = tiny[0]
    (tmp_path / "empty").mkdir()
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"format": "tldeploy.precision_plan", "format_version": 1, "precision": "int8", "onnx_sha256": "0" * 64,
                                "units": [], "flavour": "ort-x86"}))
    cases = {
        "already quantization-aware trained": [str(result.checkpoint)],
        "holds no readable images": [str(ckpt), "--calib-data", str(tmp_path / "empty")],
        "was made for another ONNX": [str(ckpt), "--keep-float", str(plan)],
        "is not a JSON precision plan": [str(ckpt), "--keep-float", str(vit[0])],
        "'int4' is not one of 'ort-x86', 'tensorrt'": [str(ckpt), "--flavour", "int4"],
        "--step-lr, --range-lr and --clip-lr >= 0": [str(ckpt), "--step-lr", "-1"],
    }
    for why, args in cases.items():
        out = tmp_path / "out"
        argv = ["qat", *args, "-o", str(out), "-q"]
        if "--calib-data" not in args:
            argv += ["--calib-data", str(data / "train")]
        assert main([*argv, "--data", str(data / "val")]) != 0
        err = capsys.readouterr().err.strip()
        assert why in err and len(err.splitlines()) == 1, err
        assert not out.exists()
    with pytest.raises(OutputExistsError):
        qat(QatConfig(ckpt, data / "train", data / "val", result.checkpoint.parent))
    with pytest.raises(DataError):
        qat(QatConfig(ckpt, tmp_path / "missing", data / "val", tmp_path / "out2"))
    assert not (tmp_path / "out2").exists()


@pytest.mark.slow  # ~10 s; the ViT's simulation is checked in the suite above, this runs its training end to end
def test_qat_on_a_vit_trains_only_the_matrix_products_placement(vit, tmp_path):
    ckpt, _, data = vit
    result = qat(QatConfig(ckpt, data / "train", data / "val", tmp_path / "run", flavour="tensorrt", epochs=1, quiet=True))
    assert result.metrics["scales_differing_from_simulation"] == 0
    _, meta = load_checkpoint(result.checkpoint)
    assert meta["qat"]["flavour"] == "tensorrt" and len(meta["qat"]["float_nodes"]) > 0  # the transformer preset's float nodes
    onnx_path = export_onnx(ExportConfig(result.checkpoint, tmp_path / "v.onnx")).path
    with pytest.raises(ConfigError, match="trained for tensorrt, not ort-x86"):
        build(BuildConfig(onnx_path, PrecisionTarget("int8", "ort"), output=tmp_path / "v.int8.onnx"))
    shutil.rmtree(tmp_path / "run")


def test_qat_under_torchrun_keeps_the_ranges_equal_across_processes(tiny, tmp_path):
    ckpt, _, data = tiny
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "tldeploy", "qat", str(ckpt),
           "--calib-data", str(data / "train"), "--data", str(data / "val"), "-o", str(out), "--epochs", "1", "--batch-size", "8",
           "--no-reduce-range"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Each process trains on its own shard; without DDP averaging the ranges' gradients they would part.
    found = re.findall(r"QAT ranges digest (\w+) \(process (\d) of 2\)", proc.stderr)
    assert sorted(p for _, p in found) == ["0", "1"] and len({d for d, _ in found}) == 1, proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "model.pt"]  # rank 0 wrote, once
    assert json.loads((out / "metrics.json").read_text())["processes"] == 2
