"""The train stage: the training loop, and the names a training script needs from below it
(backbones, heads, checkpoints, preprocessing, the built-in digits).

Public names are loaded lazily so that `import tldeploy.train` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainConfig": "tldeploy.train.config",
    "TrainResult": "tldeploy.train.config",
    "train": "tldeploy.train.training",
    "AugmentConfig": "tldeploy.modalities.preprocessing",
    "Preprocessing": "tldeploy.modalities.preprocessing",
    "BackboneSpec": "tldeploy.models.backbones",
    "create_backbone": "tldeploy.models.backbones",
    "list_backbones": "tldeploy.models.backbones",
    "register_backbone": "tldeploy.models.backbones",
    "AdaptedModel": "tldeploy.models.heads",
    "ChannelAttention": "tldeploy.models.heads",
    "create_model": "tldeploy.models.heads",
    "load_checkpoint": "tldeploy.models.checkpoints",
    "save_checkpoint": "tldeploy.models.checkpoints",
    "write_digits": "tldeploy.data.folders",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
