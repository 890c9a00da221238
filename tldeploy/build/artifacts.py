"""Build records: the JSON sidecar beside each artifact, its cache key, and the lock that keeps
two builds racing to the same output from corrupting it."""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tldeploy

RECORD_FORMAT = "tldeploy.build"
RECORD_VERSION = 1
# What makes two builds the same build. Anything else in the record is information only.
KEY_FIELDS = ("input_onnx_sha256", "precision", "backend", "device", "calibration", "quantization_options", "tools", "gpu", "options")


def cache_dir() -> Path:
    """Where calibration ranges and timing caches live ($TLDEPLOY_CACHE, default ~/.cache/tldeploy)."""
    root = os.environ.get("TLDEPLOY_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")), "tldeploy")
    return Path(root)


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# CPU flags that choose ONNX Runtime's (and PyTorch's) x86 kernels, as /proc/cpuinfo spells them.
KERNEL_FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp")


VNNI_FEATURES = ("avx512_vnni", "avx_vnni", "amx_int8")  # an int8 dot product without int16 saturation


def cpu_features() -> list[str]:
    """The KERNEL_FEATURES this CPU has (empty where /proc/cpuinfo is missing)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                have = set(line.split(":", 1)[1].split())
                return [f for f in KERNEL_FEATURES if f in have]
    return []


def cpu_info() -> dict[str, Any]:
    """Name, kernel-choosing features and class (`avx512-vnni`, `avx2`, ...) of this CPU."""
    feats = cpu_features()
    vnni = any(f in feats for f in VNNI_FEATURES)
    cls = ("avx512-vnni" if "avx512f" in feats and vnni else "avx2-vnni" if vnni else "avx512" if "avx512f" in feats
           else "avx2" if "avx2" in feats else "arm64-dotprod" if "asimddp" in feats else platform.machine() or "unknown")
    return {"name": cpu_name(), "features": feats, "class": cls}


def tool_versions() -> dict[str, str | None]:
    def version(module: str) -> str | None:
        try:
            return str(__import__(module).__version__)
        except ImportError:
            return None

    out = {"tldeploy": tldeploy.__version__, "onnx": version("onnx"), "onnxruntime": version("onnxruntime"), "tensorrt": version("tensorrt")}
    try:
        import torch

        out["torch"] = str(torch.__version__)
        out["cuda"] = str(torch.version.cuda) if torch.version.cuda else None
    except ImportError:
        out["torch"] = None
    return out


def cache_key(record: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps({k: record.get(k) for k in KEY_FIELDS}, sort_keys=True).encode()).hexdigest()


def key_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [k for k in KEY_FIELDS if old.get(k) != new.get(k)]


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def build_lock(output: Path) -> Iterator[None]:
    """An exclusive lock on OUTPUT.lock for the whole build: a second build of the same output
    waits, then finds the first one's result up to date instead of writing over it."""
    output.parent.mkdir(parents=True, exist_ok=True)
    # In the cache, not beside the artifact: lock files are never deleted (deleting one races).
    lock = cache_dir() / "locks" / (hashlib.sha256(str(output.resolve()).encode()).hexdigest()[:32] + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as f:
        try:
            import fcntl
        except ImportError:  # Windows: renames are still atomic; only the waiting is lost
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
