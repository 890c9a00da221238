"""What every backbone is: its spec, the module, the parsed `--weights`, and the helpers that
load a state-dict file into it or split it into blocks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from tldeploy.errors import CheckpointError, ConfigError, is_user_path_error
from tldeploy.modalities.preprocessing import Preprocessing

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin")

WeightsKind = Literal["default", "none", "file", "name"]


@dataclass(frozen=True)
class Weights:
    """The `--weights` string, parsed once for every factory.

    `default` (the backbone's usual pretrained weights), `none` (random init), `file` (a path to a
    local state dict: it exists or ends in .pt/.pth/.bin) or `name` (a library's weights name, such
    as torchvision's `IMAGENET1K_V2`). `text` is what the user wrote."""

    kind: WeightsKind
    text: str

    @classmethod
    def parse(cls, text: str | Weights) -> Weights:
        if isinstance(text, Weights):
            return text
        t = text.strip() or "default"
        if t in ("default", "none"):
            return cls(t, t)  # type: ignore[arg-type]
        p = Path(t)
        return cls("file" if p.suffix in STATE_DICT_SUFFIXES or p.exists() else "name", t)

    def __str__(self) -> str:
        return self.text

    def state_dict(self, backbone: str) -> dict[str, torch.Tensor] | None:
        """The tensors of a `file`; None for `default` and `none`. A `name` is refused: only a
        backbone that knows weights names (torchvision's) handles those itself."""
        if self.kind == "name":
            raise ConfigError(
                f"--weights {self.text!r}: {backbone} takes 'default', 'none' or a state-dict file "
                f"({', '.join(STATE_DICT_SUFFIXES)}), and no file {self.text} exists"
            )
        return load_state_dict_file(Path(self.text)) if self.kind == "file" else None


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


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist; pass an existing state-dict file, 'default' or 'none'")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        if is_user_path_error(e):  # permission denied, not a directory...: the CLI's one line, not "corrupt"
            raise
        raise CheckpointError(f"cannot read weights file {path} ({type(e).__name__}); is it a truncated or non-PyTorch file?") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"weights file {path} does not hold a state dict of tensors")
    return obj


def load_into(model: nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
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


def probe_channels(features: nn.Module, px: int) -> int:
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


class FeatureBody(nn.Sequential):
    """A named sequence of stages; resolve_blocks looks through it."""


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
        elif is_container(m) and type(m) is not FeatureBody and all(is_layer(c) for c in m.children()):
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
