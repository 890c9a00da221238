"""The runner for an artifact file, chosen by its suffix."""

from __future__ import annotations

from pathlib import Path

from tldeploy.errors import TldeployError
from tldeploy.runtime.runners import BaseRunner, OrtRunner, TorchRunner, artifact_kind


def load_runner(path: Path, *, device: str = "cpu", provider: str | None = None, threads: int | None = None) -> BaseRunner:
    """The runner for an artifact, chosen by its suffix (not yet active)."""
    path = Path(path)
    kind = artifact_kind(path)
    if not path.exists():
        raise TldeployError(f"artifact {path} does not exist; pass a model.pt, an .onnx or an .engine")
    if kind == "checkpoint":
        return TorchRunner(path, device=device)
    if kind == "onnx":
        return OrtRunner(path, provider=provider or ("cuda" if device == "cuda" else "cpu"), threads=threads)
    from tldeploy.runtime.trt_runner import TrtRunner  # needs tensorrt only when used

    return TrtRunner(path)
