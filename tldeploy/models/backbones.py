"""Backbones: a registry of specs, each carrying its own preprocessing.

A backbone name resolves, in order, to a registered backbone (`efficientnet_lite0`, `tiny_cnn`,
anything added with `register_backbone`), a timm model (`timm:NAME`), or a torchvision
classification model (`resnet50`, `mobilenet_v3_large`, ...).

Weights are a string, parsed once into `Weights`: `default` (the backbone's usual pretrained
weights), `none` (random init), a torchvision weights name (`ResNet50_Weights.IMAGENET1K_V2` or
`IMAGENET1K_V2`), or a path to a local state-dict file.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from tldeploy.errors import ConfigError
from tldeploy.models import builtin
from tldeploy.models.adapters import check_timm_name, create_timm, create_torchvision, torchvision_has
from tldeploy.models.base import Backbone, BackboneSpec, Weights, resolve_blocks
from tldeploy.models.builtin import load_offline_lite0_state_dict, rename_by_order

__all__ = [
    "Backbone",
    "BackboneFactory",
    "BackboneSpec",
    "TIMM_FAMILIES",
    "Weights",
    "adapt_stem",
    "check_patch_multiple",
    "create_backbone",
    "describe_backbone",
    "list_backbones",
    "load_offline_lite0_state_dict",
    "register_backbone",
    "rename_by_order",
    "resolve_blocks",
]

TIMM_FAMILIES = ("timm's models that give a spatial feature map: CNNs (EfficientNet, ResNet, ConvNeXt, RegNet, MobileNetV3) as "
                 "they are; vision transformers (ViT, DeiT, DINOv2, EVA, BEiT: the patch tokens on their grid, class, "
                 "distillation and register tokens dropped), Swin (channels-last made channels-first) and hybrids "
                 "(EfficientViT, FastViT) through timm's forward_intermediates. Transformers are built for --image-size "
                 "(a multiple of the patch size). A model with neither a map nor forward_intermediates is refused")

BackboneFactory = Callable[..., Backbone]  # (weights: Weights[, input_size=(height, width)]) -> Backbone


@dataclass(frozen=True)
class _RegisteredBackbone:
    factory: BackboneFactory
    description: str
    sized: bool  # the factory takes input_size=(height, width)


_REGISTRY: dict[str, _RegisteredBackbone] = {}


def register_backbone(name: str, description: str = "", *, replace: bool = False) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator: `factory(weights: Weights) -> Backbone` becomes available under `name`. A name
    taken already is refused (as torchvision's registry does) unless `replace=True` says it is meant."""
    if name in _REGISTRY and not replace:
        raise ConfigError(f"a backbone named {name!r} is registered already; pick another name or pass replace=True")
    if name.startswith("timm:"):
        raise ConfigError(f"backbone names starting with 'timm:' mean timm's models; register {name[5:]!r} instead")

    def deco(factory: BackboneFactory) -> BackboneFactory:
        _REGISTRY[name] = _RegisteredBackbone(factory, description, "input_size" in inspect.signature(factory).parameters)
        return factory

    return deco


register_backbone("efficientnet_lite0", builtin.LITE0_DESCRIPTION)(builtin.efficientnet_lite0)
register_backbone("tiny_cnn", builtin.TINY_DESCRIPTION)(builtin.tiny_cnn)
register_backbone("tiny_vit", builtin.TINY_VIT_DESCRIPTION)(builtin.tiny_vit)


def list_backbones(pattern: str = "*") -> list[str]:
    """Registered backbone names matching a glob; timm and torchvision names work too."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def _check_torchvision_name(name: str) -> None:
    if not torchvision_has(name):
        raise ConfigError(
            f"unknown backbone {name!r}; use a torchvision classification model (resnet50, ...), "
            f"timm:NAME, or one of: {', '.join(list_backbones())}"
        )


def describe_backbone(name: str) -> str:
    """One line on any name `create_backbone` accepts: a registered backbone's own description,
    or which library a timm:NAME or torchvision name comes from (checked against its model list)."""
    if name in _REGISTRY:
        return _REGISTRY[name].description
    if name.startswith("timm:"):
        arch = name[len("timm:") :]
        check_timm_name(arch)
        return f"timm's {arch} (its pretrained config gives the preprocessing)"
    _check_torchvision_name(name)
    return f"torchvision's {name} (its weights enum gives the preprocessing)"


def create_backbone(name: str, weights: str | Weights = "default", *, input_size: tuple[int, int] | None = None,
                    with_imagenet_head: bool = False) -> Backbone:
    """Build a backbone by name; see the module docstring for names and weights. `input_size`
    (height, width) is the input it will see: transformers are built for one size (convolutional
    backbones, and factories without an `input_size` parameter, take any)."""
    parsed = Weights.parse(weights)
    if name in _REGISTRY:
        entry = _REGISTRY[name]
        bb = entry.factory(parsed, input_size=input_size) if entry.sized else entry.factory(parsed)
    elif name.startswith("timm:"):
        bb = create_timm(name[len("timm:") :], parsed, display_name=name, input_size=input_size)
    else:
        _check_torchvision_name(name)
        bb = create_torchvision(name, parsed)
    if not with_imagenet_head:
        bb._imagenet_head.clear()
    return bb


def check_patch_multiple(backbone: Backbone, px: int) -> None:
    """A one-line ConfigError unless `px` (a chosen --image-size) is a multiple of a transformer
    backbone's patch size. A clip's spectrogram is not checked: its last partial patch is dropped."""
    patch = next((m.patch_embed.patch_size for m in backbone.modules() if hasattr(m, "patch_embed")), None)
    if patch is None:
        return
    p = patch if isinstance(patch, int) else int(patch[0])
    if px % p:
        raise ConfigError(f"--image-size {px}: {backbone.spec.name} cuts its input into {p}x{p} patches, so the size must be "
                          f"a multiple of {p}; try --image-size {max(p, round(px / p) * p)}")


def adapt_stem(backbone: Backbone, in_channels: int) -> Backbone:
    """Make the first convolution take `in_channels` (1 or 3) inputs, in place.

    One channel: the RGB filters are summed, so a grey input gives exactly what the pretrained
    network gives for that input repeated three times (timm's `adapt_input_conv` does the same)."""
    if in_channels == 3:
        return backbone
    if in_channels != 1:
        raise ConfigError(f"--in-channels must be 1 or 3, got {in_channels}")
    stem = next((m for m in backbone.features.modules() if isinstance(m, nn.Conv2d)), None)
    if stem is None or stem.in_channels != 3 or stem.groups != 1:
        raise ConfigError(f"{backbone.spec.name}: no 3-channel first convolution to adapt; use --in-channels 3")
    stem.weight = nn.Parameter(stem.weight.detach().sum(dim=1, keepdim=True))
    stem.in_channels = 1
    return backbone
