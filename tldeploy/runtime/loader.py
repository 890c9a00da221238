"""The runner for an artifact file, chosen by its suffix."""

from __future__ import annotations

from pathlib import Path

from tldeploy.errors import ConfigError, TldeployError
from tldeploy.runtime.runners import CHECKPOINT_SUFFIXES, ENGINE_SUFFIXES, BaseRunner, OrtRunner, TorchRunner


def load_runner(path: Path, *, device: str = "cpu", provider: str | None = None, threads: int | None = None) -> BaseRunner:
    """The runner for an artifact, chosen by its suffix (not yet active)."""
    path = Path(path)
    if not path.exists():
        raise TldeployError(f"artifact {path} does not exist; pass a model.pt, an .onnx or an .engine")
    if path.suffix in CHECKPOINT_SUFFIXES:
        return TorchRunner(path, device=device)
    if path.suffix == ".onnx":
        return OrtRunner(path, provider=provider or ("cuda" if device == "cuda" else "cpu"), threads=threads)
    if path.suffix in ENGINE_SUFFIXES:
        from tldeploy.runtime.trt_runner import TrtRunner  # needs tensorrt only when used

        return TrtRunner(path)
    raise ConfigError(f"cannot tell what {path} is from its suffix; expected .pt, .onnx or .engine")
