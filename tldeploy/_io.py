"""Atomic writes: an artifact is either complete or absent, never half-written."""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tldeploy.errors import OutputExistsError


def check_writable(path: Path, *, force: bool, flag: str = "--force") -> None:
    """Refuse to replace an existing artifact unless the user asked for it, and find out now, not
    after hours of work, whether `path` can be written at all (see `probe_output`)."""
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists; pass {flag} to overwrite it")
    probe_output(path)


def probe_output(path: Path) -> None:
    """Raise the OSError writing `path` would meet (its `filename` is `path`): its nearest existing
    folder is a file (not a directory), or creating a file there fails (permission denied, a
    read-only file system, ...). Creates nothing that stays: the probe file is removed at once."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(parent))
    try:
        fd, probe = tempfile.mkstemp(prefix=".tldeploy-probe.", dir=parent)
    except OSError as e:
        raise type(e)(e.errno, e.strerror, str(path)) from None
    os.close(fd)
    os.unlink(probe)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        _name(e, path)
        raise
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; an artifact gets the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        _name(e, path)
        raise


@contextlib.contextmanager
def atomic_dir(path: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as e:
        _name(e, path)
        raise
    try:
        yield tmp
        if path.exists():
            if not force:
                raise OutputExistsError(f"{path} already exists; pass --force to overwrite it")
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _name(e, path)
        raise


def _name(e: BaseException, path: Path) -> None:
    """An OSError from writing (a full disk fails write() or close(), which name no file) names
    the artifact it was writing; one naming its temporary file names the artifact instead."""
    if not isinstance(e, OSError):
        return
    if (e.filename is None and e.errno in _WRITE_ERRNOS) or (e.filename is not None and Path(str(e.filename)).name.startswith(f".{path.name}.")):
        e.filename = str(path)


_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_png(fig, path: Path, dpi: float = 110) -> Path:
    """A matplotlib figure as PNG at `path` (written atomically), then closed if pyplot holds it."""
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    if fig.canvas.manager is not None:  # made by pyplot, which keeps it until closed
        import matplotlib.pyplot as plt

        plt.close(fig)
    return Path(path)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
