"""Checkpoints: a state dict plus JSON-like metadata, loadable with `weights_only=True`.

The metadata is plain data (strings, numbers, lists, dicts); nothing in it is ever evaluated.
"""

from __future__ import annotations

import datetime as _dt
import pickle
from pathlib import Path
from typing import Any

import torch

import tldeploy
from tldeploy._io import atomic_path, check_version
from tldeploy.errors import CheckpointError, ConfigError, is_user_path_error

CHECKPOINT_FORMAT = "tldeploy.checkpoint"
TRAIN_STATE_FORMAT = "tldeploy.train-state"
FORMAT_VERSION = 1
READS = (FORMAT_VERSION,)


def versions() -> dict[str, str]:
    import torchvision

    out = {"tldeploy": tldeploy.__version__, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__)}
    try:
        import timm

        out["timm"] = str(timm.__version__)
    except ImportError:
        pass
    return out


def plain(obj: Any) -> Any:
    """Metadata as builtin types only, so that `weights_only=True` loading accepts it."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, bool) or obj is None:
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:  # numpy or torch scalar
        return obj.item()
    return str(obj)


def save_checkpoint(path: Path, model: torch.nn.Module, metadata: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None) -> None:
    """`tensors`: data beside the weights that is not part of the model (the source features
    `tldeploy shift` compares with, the validation OOD scores)."""
    meta = dict(metadata)
    meta.setdefault("versions", versions())
    meta.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    obj = {
        "format": CHECKPOINT_FORMAT,
        "format_version": FORMAT_VERSION,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": plain(meta),
        "tensors": {k: v.detach().cpu() for k, v in (tensors or {}).items()},
    }
    with atomic_path(Path(path)) as tmp:
        torch.save(obj, tmp)


def checkpoint_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's data tensors (empty for checkpoints from before they were saved)."""
    return _tensors(_read_checkpoint(path))


def _tensors(obj: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in (obj.get("tensors") or {}).items() if isinstance(v, torch.Tensor)}


def _read_checkpoint(path: Path) -> dict[str, Any]:
    return read_torch_file(path, CHECKPOINT_FORMAT, "checkpoint",
                           hint="pass a model.pt written by 'tldeploy train' (foreign weights go to --weights)")


def read_torch_file(
    path: Path, expected_format: str, what: str, hint: str = "train one with 'tldeploy train'"
) -> dict[str, Any]:
    """torch.load with weights_only=True and a clear error for missing, truncated or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist; {hint}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle with code, random bytes...
        if is_user_path_error(e):  # permission denied, not a directory...: the CLI's one line, not "corrupt"
            raise
        if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in str(e):
            # torch's message advises loading it unsafely (and holds terminal escapes): not ours to print
            raise CheckpointError(
                f"refusing to load {what} {path}: it holds Python objects beyond tensors and plain data, which "
                f"loading would run as code; {hint}"
            ) from None
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise CheckpointError(
            f"cannot read {what} {path}: it is truncated, corrupt or not a PyTorch file ({reason})"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != expected_format:
        raise CheckpointError(
            f"{path} is not a {what} written by tldeploy (no '{expected_format}' marker); {hint}"
        )
    return check_version(obj, str(path), f"{what} format", READS, hint=hint, error=CheckpointError)


def load_checkpoint(path: Path):
    """Rebuild the adapted model from a checkpoint. Returns (model in eval mode, metadata)."""
    model, meta, _ = load_checkpoint_and_tensors(path)
    return model, meta


def load_checkpoint_and_tensors(path: Path):
    """(model in eval mode, metadata, data tensors) from one read of the checkpoint."""
    from tldeploy.modalities.preprocessing import preprocessing_from_dict
    from tldeploy.models.backbones import adapt_stem, create_backbone
    from tldeploy.models.heads import AdaptedModel, AttentionHead, HeadConfig

    obj = _read_checkpoint(path)
    meta = obj["metadata"]
    try:
        prep = preprocessing_from_dict(meta["preprocessing"])
        backbone = create_backbone(meta["backbone"]["name"], "none", input_size=prep.backbone_size)
        head = AttentionHead(HeadConfig(**meta["head"]))
        adapt_stem(backbone, prep.in_channels)  # a no-op for 3 channels
        model = AdaptedModel(backbone, head, prep.frontend())
        model.load_state_dict(obj["state_dict"])
    except (KeyError, TypeError, RuntimeError, ConfigError) as e:
        raise CheckpointError(f"checkpoint {path} is incomplete or does not match its metadata ({type(e).__name__}: {str(e)[:200]})") from None
    model.eval()
    return model, meta, _tensors(obj)


def save_train_state(path: Path, state: dict[str, Any]) -> None:
    obj = {"format": TRAIN_STATE_FORMAT, "format_version": FORMAT_VERSION, **state}
    with atomic_path(Path(path)) as tmp:
        torch.save(obj, tmp)


def load_train_state(path: Path) -> dict[str, Any]:
    return read_torch_file(
        path, TRAIN_STATE_FORMAT, "training state", hint="start the run again with --force instead of --resume"
    )
