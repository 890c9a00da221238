"""The real offline model on real data: EfficientNet-Lite0 with packaged ImageNet weights, digits."""

import pytest
import torch

from tldeploy.modalities.preprocessing import AugmentConfig
from tldeploy.models.backbones import create_backbone
from tldeploy.train.training import TrainConfig, train


def test_offline_imagenet_weights_are_real():
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    bb = create_backbone("efficientnet_lite0", with_imagenet_head=True).eval()
    tf = bb.spec.preprocessing.eval_transform()
    with torch.no_grad():
        def top1(img):
            return int(bb.imagenet_head(bb(tf(Image.fromarray(img))[None])).argmax())

        assert 281 <= top1(skdata.chelsea()) <= 285  # tabby, tiger cat, Persian, Siamese, Egyptian cat
        assert top1(skdata.coffee()) == 967  # espresso


def test_feature_extract_at_224_reaches_90_percent(fe_run):
    assert fe_run.metrics["accuracy"] >= 0.90


def _fewshot(digits, out, weights):
    return train(
        TrainConfig(
            data=digits, out_dir=out, mode="finetune", weights=weights, image_size=64, limit_per_class=20,
            epochs=15, warmup_epochs=2, batch_size=32, augment=AugmentConfig(hflip=False), quiet=True,
        )
    ).metrics["accuracy"]


def test_fewshot_finetune_shows_transfer(digits, tmp_path):
    """Measured on a 2-core AVX-512 VM: 15 epochs ImageNet 0.919 vs scratch 0.515 (71 s for both);
    30 epochs 0.953 vs 0.688 (206 s, contended)."""
    pretrained = _fewshot(digits, tmp_path / "pre", "default")
    scratch = _fewshot(digits, tmp_path / "scratch", "none")
    print(f"20 images/class, 64 px, finetune: ImageNet {pretrained:.4f} vs from scratch {scratch:.4f}")
    assert pretrained - scratch >= 0.10


@pytest.mark.slow
def test_finetune_on_full_digits_reaches_97_percent(digits, tmp_path):
    result = train(
        TrainConfig(
            data=digits, out_dir=tmp_path / "ft", mode="finetune", image_size=64, epochs=8, warmup_epochs=1,
            augment=AugmentConfig(hflip=False, crop_scale=0.7, color_jitter=0.1), quiet=True,
        )
    )
    print(f"finetune full digits 64 px: accuracy {result.metrics['accuracy']:.4f}")
    assert result.metrics["accuracy"] >= 0.97
