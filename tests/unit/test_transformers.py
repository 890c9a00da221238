"""Token backbones (vision transformers through timm's forward_intermediates) on the registered
`tiny_vit`: the patch grid as the head's feature map, training, export parity, the CAM on the grid,
module paths in the graph, --image-size rules, audio spectrograms. Seconds each, random weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _images import make_blob_images

from tldeploy.errors import ConfigError
from tldeploy.export.onnx_export import ExportConfig, export_onnx
from tldeploy.modalities.preprocessing import AugmentConfig
from tldeploy.models.backbones import create_backbone
from tldeploy.models.checkpoints import load_checkpoint
from tldeploy.parity import parity_inputs
from tldeploy.runtime.runners import OrtRunner, run_batches
from tldeploy.scopes import module_paths
from tldeploy.train.training import TrainConfig, train


def _train(data, out, **kw):
    base = dict(backbone="tiny_vit", mode="finetune", epochs=2, warmup_epochs=1, batch_size=8, lr=1e-2, quiet=True,
                augment=AugmentConfig.off())
    return train(TrainConfig(data=data, out_dir=out, **{**base, **kw}))


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory):
    """(checkpoint, data) of tiny_vit fine-tuned at 48 px (12 x 12 patches of 4) on blob images."""
    root = tmp_path_factory.mktemp("vit")
    make_blob_images(root / "data" / "train", 12, seed=0)
    make_blob_images(root / "data" / "val", 4, seed=1)
    return _train(root / "data", root / "run", image_size=48).checkpoint, root / "data"


def test_the_patch_tokens_are_the_feature_map_and_the_class_token_is_dropped():
    bb = create_backbone("tiny_vit", "none", input_size=(48, 64)).eval()
    vit = bb.features.model
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        fmap = bb(x)
        tokens = vit.forward_features(x)  # (N, 1 + 12 * 16, C), normed
    assert fmap.shape == (2, 32, 12, 16) and vit.num_prefix_tokens == 1 and tokens.shape == (2, 1 + 12 * 16, 32)
    by_hand = tokens[:, 1:].reshape(2, 12, 16, 32).permute(0, 3, 1, 2)
    torch.testing.assert_close(fmap, by_hand, rtol=0, atol=1e-6)


def test_a_vit_trains_exports_with_parity_and_its_cam_is_the_patch_grid(vit_run, tmp_path):
    ckpt, data = vit_run
    model, meta = load_checkpoint(ckpt)
    assert meta["preprocessing"]["input_size"] == 48 and model.backbone.features.model.patch_embed.grid_size == (12, 12)
    result = export_onnx(ExportConfig(ckpt, tmp_path / "vit.onnx", data=data / "val"))
    assert all(r and r.logits_max_abs <= 1e-4 for _, r in result.parity)  # the export's own check, batch 1 and 7
    x = parity_inputs(model_prep(meta), data / "val", 8)
    with torch.no_grad():
        logits, _, cam = model.forward_with_cam(torch.from_numpy(x))
    with OrtRunner(result.path) as r:
        out = run_batches(r, x)
    assert out["cam"].shape == (8, 12, 12)
    np.testing.assert_allclose(out["cam"], cam.numpy(), atol=1e-4)
    np.testing.assert_allclose(out["logits"], logits.numpy(), atol=1e-4)
    import onnx

    paths = set(module_paths(onnx.load(str(result.path))).values())
    for name in ("blocks.0.attn.qkv", "blocks.1.mlp.fc2", "blocks.1.norm1"):
        assert f"backbone.features.model.{name}" in paths, sorted(p for p in paths if "blocks" in p)[:20]


def test_a_vits_cam_overlay_and_attention_plugin_export(vit_run, tmp_path):
    """predict draws the 12 x 12 patch-grid CAM upsampled to the 48 px input; the head's plugin
    export replaces the channel attention with one ChannelAttention node, blocks untouched."""
    from collections import Counter

    import onnx
    from PIL import Image

    from tldeploy.predict import predict

    ckpt, data = vit_run
    image = sorted((data / "val").rglob("*.png"))[0]
    [pred] = predict(ckpt, [image], top_k=2, cam_out=tmp_path / "cams")
    assert pred.cam.shape == (12, 12) and Image.open(pred.cam_png).size == (48, 48)
    plugin = onnx.load(str(export_onnx(ExportConfig(ckpt, tmp_path / "p.onnx", attention_plugin=True)).path))
    ops = Counter(n.op_type for n in plugin.graph.node)
    # Softmax: the two blocks' attention and `probs`; LayerNorm: two per block and the final one
    assert ops["ChannelAttention"] == 1 and ops["Softmax"] == 3 and ops["LayerNormalization"] == 5


def model_prep(meta):
    from tldeploy.modalities.preprocessing import preprocessing_from_dict

    return preprocessing_from_dict(meta["preprocessing"])


def test_image_size_must_be_a_multiple_of_the_patch(tmp_path, blob_data):
    with pytest.raises(ConfigError, match=r"--image-size 30: tiny_vit cuts its input into 4x4 patches, .* try --image-size 32"):
        _train(blob_data, tmp_path / "run", image_size=30)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_a_token_model_without_forward_intermediates_is_refused_in_one_line(monkeypatch):
    import timm

    from tldeploy.models import adapters
    from tldeploy.models.base import Weights

    class Tokens(torch.nn.Module):  # a transformer family timm has not given forward_intermediates
        num_prefix_tokens = 1
        pretrained_cfg: dict = {}

    monkeypatch.setattr(adapters, "check_timm_name", lambda arch: None)
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: Tokens())
    with pytest.raises(ConfigError, match="timm:tokens_only gives tokens, not a spatial feature map, and has no forward_intermediates"):
        adapters.create_timm("tokens_only", Weights.parse("none"), "timm:tokens_only")


def test_audio_spectrograms_through_a_vit(tmp_path):
    """A clip's spectrogram is not square (64 mel bands x its frames): the transformer is built for
    it (a frame count that is no multiple of 4 loses its last partial patch), and the export keeps parity."""
    from tldeploy.data.tones import write_tones
    from tldeploy.modalities.audio import AudioAugmentConfig, LogMelConfig

    write_tones(tmp_path / "tones", per_class=4)
    run = _train(tmp_path / "tones", tmp_path / "run", modality="audio", logmel=LogMelConfig(n_mels=64),
                 augment=AudioAugmentConfig.off())
    model, meta = load_checkpoint(run.checkpoint)
    h, w = model_prep(meta).backbone_size
    grid = (h // 4, w // 4)
    assert h == 64 and w > h and model.backbone.features.model.patch_embed.grid_size == grid
    result = export_onnx(ExportConfig(run.checkpoint, tmp_path / "tones.onnx"))
    assert all(r and r.logits_max_abs <= 1e-4 for _, r in result.parity)
    with OrtRunner(result.path) as r:
        assert run_batches(r, parity_inputs(model_prep(meta), None, 2))["cam"].shape == (2, *grid)


@pytest.fixture(scope="module")
def vit_onnx(vit_run, tmp_path_factory):
    return export_onnx(ExportConfig(vit_run[0], tmp_path_factory.mktemp("vit_onnx") / "vit.onnx")).path


def test_a_transformers_units_are_its_layers(vit_onnx):
    """A linear layer on tokens (MatMul + bias Add) is one unit, so is the exact GELU (Div, Erf, Add,
    Mul, Mul from one call); the attention's two MatMuls and Softmax are units of their own."""
    import onnx

    from tldeploy.engines.units import fp16_units

    listed = [(u.short, u.op) for u in fp16_units(onnx.load(str(vit_onnx)), exclude=set())]
    units = set(listed)
    for block in (0, 1):
        assert {(f"blocks.{block}.attn.qkv", "MatMul+Add"), (f"blocks.{block}.mlp.fc2", "MatMul+Add"),
                (f"blocks.{block}.mlp.act", "Div+Erf+Add+Mul+Mul"), (f"blocks.{block}.attn", "Softmax"),
                (f"blocks.{block}.norm1", "LayerNormalization"), (f"blocks.{block}", "Add")} <= units, sorted(units)
    assert listed.count(("blocks.0.attn", "MatMul")) == 2 and listed.count(("blocks.0.attn", "Softmax")) == 1  # Q·K, A·V
    assert ("backbone.features", "Add") in units  # the position embedding: the wrapper's own node keeps its whole path


def test_int8_quantizes_the_transformer_blocks_and_keeps_the_head_float(vit_run, vit_onnx):
    """The backbone ends where its name scopes end, not at its last convolution (a ViT's only one is
    the patch embedding, which left every block in float): with `--int8-preset none` the blocks'
    MatMuls, LayerNorms, Softmaxes and residual Adds read Q/DQ; by default (the transformer preset)
    only the matrix products do; the head's linear layers never."""
    import onnx

    from tldeploy.bench.bench import build_summary
    from tldeploy.engines.builder import BuildConfig, build
    from tldeploy.engines.capabilities import PrecisionTarget
    from tldeploy.engines.quantize import Int8Options

    _, data = vit_run

    def fed_by_dq(preset: str):
        result = build(BuildConfig(vit_onnx, PrecisionTarget("int8", "ort"), calib_data=data / "train", int8=Int8Options(keep_float=0, preset=preset),
                                   output=vit_onnx.with_name(f"vit.{preset}.int8.onnx"), force=True))
        model = onnx.load(str(result.path))
        dq_out = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        return {n.op_type for n in model.graph.node if any(i in dq_out for i in n.input)}, result.record

    fed, record = fed_by_dq("none")
    assert {"MatMul", "LayerNormalization", "Softmax", "Add"} <= fed and "Gemm" not in fed, sorted(fed)
    assert record.quantization["preset"] is None and build_summary(record)["preset"] is None
    fed, record = fed_by_dq("auto")
    preset = record.quantization["preset"]
    assert fed == {"Conv", "MatMul"} and "blocks.1.norm2" in preset["float_units"] and "blocks.0.mlp.fc1" not in preset["float_units"]
    assert build_summary(record)["preset"] == preset["name"]  # bench says what else the build kept in float
