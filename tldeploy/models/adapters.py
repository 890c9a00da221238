"""timm and torchvision models as backbones: each split into a feature extractor and its ImageNet
head, with the preprocessing its pretrained config or weights enum gives."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from tldeploy.errors import ConfigError, MissingDependencyError, TldeployError
from tldeploy.modalities.preprocessing import Preprocessing
from tldeploy.models.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    BackboneSpec,
    FeatureBody,
    Weights,
    load_into,
    probe_channels,
)

# ---------------------------------------------------------------- timm


class _TimmPart(nn.Module):
    """One method of a timm model (forward_features, forward_head) as a module's forward."""

    def __init__(self, model: nn.Module, method: str, **kw: Any) -> None:
        super().__init__()
        self.model, self.method, self.kw = model, method, kw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.model, self.method)(x, **self.kw)


class TimmSpatial(nn.Module):
    """The last stage of a timm model as an (N, C, h, w) map, through timm's own
    `forward_intermediates`: a transformer's patch tokens on their grid with the prefix tokens
    (class, distillation, registers) dropped and the final norm applied; a channels-last map
    (Swin) channels-first."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_intermediates(x, indices=1, intermediates_only=True, norm=True, output_fmt="NCHW")[-1]


def gives_tokens(model: nn.Module) -> bool:
    """Whether `forward_features` gives something other than an (N, C, h, w) map: tokens (ViT,
    DeiT, EVA, BEiT: they have prefix tokens) or a channels-last map (Swin)."""
    return hasattr(model, "num_prefix_tokens") or getattr(model, "output_fmt", "NCHW") != "NCHW"


def _create_model(timm, arch: str, pretrained: bool, size: tuple[int, int] | None) -> nn.Module:
    """timm's model, built for `size` where it is built for one input size (transformers: their
    position embeddings and windows; timm resamples pretrained position embeddings itself)."""
    if size is not None:
        try:
            return timm.create_model(arch, pretrained=pretrained, img_size=size)
        except TypeError as e:  # convolutional models take any size and no img_size
            if "img_size" not in str(e):
                raise
    return timm.create_model(arch, pretrained=pretrained)


def timm_module():
    try:
        import timm
    except ImportError:
        raise MissingDependencyError("timm", purpose="timm backbones") from None
    return timm


def check_timm_name(arch: str) -> None:
    if arch not in timm_module().list_models():
        raise ConfigError(f"unknown timm model {arch!r}; see timm.list_models() for names")


def create_timm(
    arch: str,
    weights: Weights,
    display_name: str,
    *,
    state_dict: dict[str, torch.Tensor] | None = None,
    weights_label: str | None = None,
    description: str = "",
    input_size: tuple[int, int] | None = None,
) -> Backbone:
    """timm's `arch`; `state_dict` (with its `weights_label`) overrides what `weights` names.
    `input_size` (height, width) builds a transformer for that input (convolutional models take any)."""
    timm = timm_module()
    check_timm_name(arch)
    if state_dict is None:
        state_dict = weights.state_dict(display_name)
        weights_label = weights.text if state_dict is not None else weights_label
    pretrained = weights.kind == "default" and state_dict is None
    try:
        model = _create_model(timm, arch, pretrained, input_size)
    except (TypeError, AssertionError, ValueError) as e:
        if input_size is None:  # not a size the user chose: a bug or a broken timm model keeps its traceback
            raise
        raise ConfigError(f"timm:{arch} cannot be built for a {input_size[0]}x{input_size[1]} input "
                          f"({type(e).__name__}: {str(e)[:160]}); try another --image-size") from None
    except Exception as e:
        raise TldeployError(
            f"could not load pretrained weights for timm:{arch} ({type(e).__name__}); without internet "
            f"pass --weights none or --weights PATH to a local state dict"
        ) from None
    if state_dict is not None:
        load_into(model, state_dict, weights_label or weights.text)
    cfg = model.pretrained_cfg
    px = int(cfg.get("input_size", (3, 224, 224))[-1])
    prep = Preprocessing(
        input_size=px,
        resize_size=round(px / float(cfg.get("crop_pct", 0.875))),
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        interpolation=cfg.get("interpolation", "bicubic"),
    )
    if gives_tokens(model):
        if not hasattr(model, "forward_intermediates"):
            raise ConfigError(f"timm:{arch} gives tokens, not a spatial feature map, and has no forward_intermediates to place them "
                              f"on a grid, so the channel-attention head and its CAM cannot use it; choose a convolutional, "
                              f"vision-transformer, Swin or hybrid model (tldeploy backbones lists the families)")
        model.reset_classifier(0)
        features: nn.Module = TimmSpatial(model)
        channels = int(model.feature_info[-1]["num_chs"])
        head = None  # timm's head pools tokens the map no longer has (class, distillation tokens)
    else:
        # The ImageNet head shares the body: timm's pooling (pre_logits) then the classifier it had.
        head = nn.Sequential(_TimmPart(model, "forward_head", pre_logits=True), model.get_classifier())
        model.reset_classifier(0)
        features, channels = _TimmPart(model, "forward_features"), int(model.num_features)
    loaded = weights_label or ("none" if weights.kind == "none" else "timm-default")
    spec = BackboneSpec(display_name, prep, cfg.get("classifier", "classifier"), loaded, description)
    return Backbone(features, spec, channels, head)


# ---------------------------------------------------------------- torchvision


def torchvision_has(name: str) -> bool:
    import torchvision

    return name in torchvision.models.list_models(module=torchvision.models)


def create_torchvision(name: str, weights: Weights) -> Backbone:
    """torchvision's classification model `name`; a weights name is one of its weights enum."""
    from torchvision.models import get_model, get_model_weights

    enum = get_model_weights(name)
    w = enum.DEFAULT if weights.kind == "default" else None
    if weights.kind == "name":
        short = weights.text.split(".", 1)[1] if weights.text.startswith(enum.__name__ + ".") else weights.text
        if short not in enum.__members__:
            raise ConfigError(
                f"--weights {weights.text!r} is neither a weights name of {name} "
                f"({', '.join(str(m) for m in enum)}), a state-dict file, 'default' nor 'none'"
            )
        w = enum[short]
    sd = weights.state_dict(name) if weights.kind == "file" else None
    try:
        model = get_model(name, weights=w)
    except Exception as e:
        raise TldeployError(
            f"could not load {w} for {name} ({type(e).__name__}); without internet or a cached copy "
            f"pass --weights none or --weights PATH to a local state dict"
        ) from None
    if sd is not None:
        load_into(model, sd, weights.text)
    features, head, classifier_name = _split_torchvision(model, name)
    t = (w or enum.DEFAULT).transforms()
    prep = Preprocessing(
        input_size=int(t.crop_size[0]),
        resize_size=int(t.resize_size[0]),
        mean=tuple(t.mean),
        std=tuple(t.std),
        interpolation=t.interpolation.value,
    )
    loaded = str(w) if w is not None else ("none" if sd is None else weights.text)
    spec = BackboneSpec(name, prep, classifier_name, loaded, f"torchvision {name}")
    return Backbone(features, spec, probe_channels(features, 64), head)


def _split_torchvision(model: nn.Module, name: str) -> tuple[nn.Module, nn.Module, str]:
    children = dict(model.named_children())
    if "features" in children and "classifier" in children:
        features: nn.Module = model.features
        if name.startswith("densenet"):
            features = FeatureBody(model.features, nn.ReLU())
        pool = children.get("avgpool", nn.AdaptiveAvgPool2d(1))
        flat = any(isinstance(m, nn.Flatten) for m in model.classifier.modules())
        head = nn.Sequential(pool, *([] if flat else [nn.Flatten(1)]), model.classifier)
        return features, head.eval(), "classifier"
    if "avgpool" in children and "fc" in children:
        names = list(children)
        stages = [(n, children[n]) for n in names[: names.index("avgpool")]]
        features = FeatureBody(OrderedDict(stages))
        head = nn.Sequential(model.avgpool, nn.Flatten(1), model.fc)
        return features, head.eval(), "fc"
    raise ConfigError(
        f"torchvision model {name} has no recognised feature/classifier split; try timm:{name}"
    )
