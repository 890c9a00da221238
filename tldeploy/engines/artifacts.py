"""Build records: the JSON sidecar beside each artifact, its cache key, and the lock that keeps
two builds racing to the same output from corrupting it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from tldeploy.records import BuildRecord

# What makes two builds the same build. Anything else in the record is information only.
KEY_FIELDS = ("input_onnx_sha256", "precision", "backend", "device", "calibration", "quantization_options", "tools", "gpu", "options")


def cache_dir() -> Path:
    """Where calibration ranges and timing caches live ($TLDEPLOY_CACHE, default ~/.cache/tldeploy)."""
    root = os.environ.get("TLDEPLOY_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")), "tldeploy")
    return Path(root)




def cache_key(record: BuildRecord) -> str:
    doc = record.to_json()
    return hashlib.sha256(json.dumps({k: doc.get(k) for k in KEY_FIELDS}, sort_keys=True).encode()).hexdigest()


def key_differences(old: BuildRecord, new: BuildRecord) -> list[str]:
    a, b = old.to_json(), new.to_json()
    return [k for k in KEY_FIELDS if a.get(k) != b.get(k)]


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
