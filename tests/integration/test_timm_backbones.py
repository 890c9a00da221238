"""timm's transformers and hybrids end to end, with random weights on a few blob images per class:
train -> export (parity within 1e-4, checked by export) -> ONNX Runtime FP32 and fully quantized
INT8 -> bench against the checkpoint -> bundle -> verify in another folder. Small input sizes;
behind --runslow (172 s for all seven on 2 cores, AMD EPYC avx512-vnni: over the suite's budget), while
tests/unit/test_transformers.py covers the token path on the tiny ViT in seconds."""

from __future__ import annotations

import time

import pytest
from _images import make_blob_images

from tldeploy.bench.bench import BenchConfig, run_bench
from tldeploy.bench.latency import LatencyConfig
from tldeploy.deploy.bundle import BundleConfig, bundle
from tldeploy.deploy.verify import VerifyConfig, verify
from tldeploy.engines.builder import BuildConfig, build
from tldeploy.export.onnx_export import ExportConfig, export_onnx
from tldeploy.modalities.preprocessing import AugmentConfig
from tldeploy.train.training import TrainConfig, train

MODELS = {  # name: input size (a multiple of the patch; DINOv2's patch is 14)
    "deit_tiny_distilled_patch16_224": 64,  # class and distillation tokens
    "vit_small_patch14_reg4_dinov2": 98,  # class token and four registers
    "swinv2_tiny_window8_256": 64,  # channels-last map
    "efficientvit_b0": 64,  # hybrid: convolutions and linear attention
    "fastvit_t8": 64,  # hybrid: reparameterised convolutions and attention
    "convnextv2_atto": 64,
    "mobilenetv3_large_100": 64,  # hard-swish and squeeze-excite: once a cyclic INT8 graph
}


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    root = tmp_path_factory.mktemp("blobs")
    make_blob_images(root / "train", 8, seed=0)
    make_blob_images(root / "val", 4, seed=1)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(MODELS))
def test_a_timm_backbone_goes_from_training_to_a_verified_bundle(arch, blobs, tmp_path):
    t0 = time.perf_counter()
    ckpt = train(TrainConfig(data=blobs, out_dir=tmp_path / "run", backbone=f"timm:{arch}", weights="none", mode="finetune", epochs=2,
                             warmup_epochs=1, image_size=MODELS[arch], batch_size=8, quiet=True, augment=AugmentConfig.off())).checkpoint
    exported = export_onnx(ExportConfig(ckpt, tmp_path / f"{arch}.onnx", data=blobs / "val"))
    assert all(r and r.logits_max_abs <= 1e-4 for _, r in exported.parity)
    fp32 = build(BuildConfig(exported.path, "fp32", backend="ort"))
    int8 = build(BuildConfig(exported.path, "int8", backend="ort", calib_data=blobs / "train", keep_float=0))
    doc = run_bench(BenchConfig((fp32.path, int8.path), tmp_path / "bench.json", reference=ckpt, data=blobs / "val", batch_sizes=(1,),
                                latency=LatencyConfig(warmup=1, iters=2, rounds=1, settle_s=0.0), time_reference=False, quiet=True)).document
    ref, f32, _ = doc["results"]
    assert f32["parity"]["logits_max_abs"] <= 1e-3 and f32["accuracy"] == ref["accuracy"]
    packed = bundle(BundleConfig((exported.path, fp32.path, int8.path), ckpt, blobs / "val", tmp_path / "bundle"))
    checked = verify(VerifyConfig(packed.path, device="cpu"))
    by_name = {c.artifact: c for c in checked.checks}
    assert set(by_name) == {"model.onnx", "model_raw.onnx", f"artifacts/{fp32.path.name}", f"artifacts/{int8.path.name}"}
    # Every float artifact verifies. The fully quantized INT8 one is checked and reported, not
    # required to pass: PTQ everywhere on a random-weight transformer can miss verify's INT8
    # tolerance (DeiT: 87.5% agreement, cosine 0.77), which the default guarded build meets.
    assert all(c.passed for name, c in by_name.items() if ".int8." not in name), checked.failures()
    print(f"\ntimm:{arch} at {MODELS[arch]} px: train to verify {time.perf_counter() - t0:.0f} s; fully quantized INT8: agreement "
          f"{doc['results'][2]['parity']['top1_agreement']:.2f} in bench, verify {by_name[f'artifacts/{int8.path.name}'].detail}")
