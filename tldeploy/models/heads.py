"""The adapted model: backbone -> channel attention -> global average pool -> linear classifier.

`AdaptedModel.forward` returns logits. `AdaptedModel.forward_with_cam` also returns softmax
probabilities and the class activation map of the predicted class, computed from the classifier
weights in the forward pass (no gradients), so it exports to ONNX as plain operators.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tldeploy.errors import ConfigError
from tldeploy.models.base import Backbone


class ChannelAttention(nn.Module):
    """CBAM channel attention: sigmoid(MLP(avgpool(x)) + MLP(maxpool(x))) scales each channel.

    The MLP is shared by both branches: C -> C/r -> ReLU -> C.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.channels, self.reduction = channels, reduction
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """Per-channel attention weights (N, C) in (0, 1)."""
        avg = x.mean(dim=(2, 3))
        mx = x.amax(dim=(2, 3))
        return torch.sigmoid(self.fc2(F.relu(self.fc1(avg))) + self.fc2(F.relu(self.fc1(mx))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights(x)[:, :, None, None]


@dataclass(frozen=True)
class HeadConfig:
    num_classes: int
    in_channels: int
    reduction: int = 16
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ConfigError(f"a classifier needs at least 2 classes, got {self.num_classes}")
        if self.reduction < 1:
            raise ConfigError(f"--reduction must be at least 1, got {self.reduction}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return asdict(self)


class AttentionHead(nn.Module):
    """Feature map (N, C, h, w) -> attention -> GAP -> dropout -> linear."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.attention = ChannelAttention(cfg.in_channels, cfg.reduction)
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.in_channels, cfg.num_classes)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        attended = self.attention(feats)
        return self.classifier(self.dropout(attended.mean(dim=(2, 3))))

    def logits_and_raw_cam(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the predicted class's unnormalised map sum_k w_ck A_k, (N, h, w)."""
        attended = self.attention(feats)
        logits = self.classifier(attended.mean(dim=(2, 3)))
        w = self.classifier.weight.index_select(0, logits.argmax(dim=1))  # (N, C)
        return logits, (attended * w[:, :, None, None]).sum(dim=1)

    @torch.no_grad()
    def forward_with_cam(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, probs, cam): cam is the predicted class's map, per image in [0, 1], (N, h, w)."""
        logits, raw = self.logits_and_raw_cam(feats)
        return logits, torch.softmax(logits, dim=1), normalise_cam(raw)


def normalise_cam(raw: torch.Tensor) -> torch.Tensor:
    """Scale each map to [0, 1] (a constant map becomes zeros)."""
    lo = raw.amin(dim=(1, 2), keepdim=True)
    hi = raw.amax(dim=(1, 2), keepdim=True)
    return (raw - lo) / (hi - lo).clamp_min(1e-12)


class AdaptedModel(nn.Module):
    """[front end ->] backbone -> head. The front end (audio: waveform -> log-mel) has no saved
    state; images have none."""

    def __init__(self, backbone: Backbone, head: AttentionHead, frontend: nn.Module | None = None) -> None:
        super().__init__()
        self.frontend = frontend if frontend is not None else nn.Identity()
        self.backbone = backbone
        self.head = head

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map the head sees."""
        return self.backbone(self.frontend(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))

    @torch.no_grad()
    def forward_with_cam(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.head.forward_with_cam(self.embed(x))


def create_model(
    backbone: Backbone, num_classes: int, reduction: int = 16, dropout: float = 0.2, frontend: nn.Module | None = None
) -> AdaptedModel:
    cfg = HeadConfig(num_classes=num_classes, in_channels=backbone.num_features, reduction=reduction, dropout=dropout)
    return AdaptedModel(backbone, AttentionHead(cfg), frontend)
