"""The train stage: data, backbones, heads, the training loop and checkpoints.

Public names are loaded lazily so that `import tldeploy.pipeline` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainConfig": "training",
    "TrainResult": "training",
    "train": "training",
    "AugmentConfig": "preprocessing",
    "Preprocessing": "preprocessing",
    "BackboneSpec": "backbones",
    "create_backbone": "backbones",
    "list_backbones": "backbones",
    "register_backbone": "backbones",
    "AdaptedModel": "heads",
    "ChannelAttention": "heads",
    "create_model": "heads",
    "load_checkpoint": "checkpoints",
    "save_checkpoint": "checkpoints",
    "write_digits": "data",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
