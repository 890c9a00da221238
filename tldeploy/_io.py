"""Atomic writes (an artifact is either complete or absent, never half-written), hashing, and the
one reader of tldeploy's JSON documents with its version policy."""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tldeploy.errors import OutputExistsError, TldeployError, is_user_path_error


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


# ---------------------------------------------------------------- documents

Upgrade = Callable[[dict[str, Any], int], dict[str, Any]]


def read_document(path: Path, fmt: str, reads: tuple[int, ...], upgrade: Upgrade | None = None, *, what: str, hint: str,
                  label: str | None = None, version_key: str = "format_version", version_what: str | None = None,
                  error: type[TldeployError] = TldeployError) -> dict[str, Any]:
    """A tldeploy JSON document (build record, manifest, plan, bench document) from `path`, checked
    for its `format` marker and version: every refusal is one `error` line naming the file (or
    `label`, e.g. "--precision-plan plan.json") and `hint`, the fix. See `check_version`."""
    path = Path(path)
    name = label or str(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{name} does not exist; {hint}") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        if is_user_path_error(e):  # permission denied, not a directory...: the CLI's one line, not "corrupt"
            raise
        raise error(f"{name} is not a JSON {what}: unreadable ({type(e).__name__}: {str(e)[:120]}); {hint}") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise error(f"{name} is not a tldeploy {what} (format {fmt!r} expected); {hint}")
    return check_version(doc, name, version_what or what, reads, upgrade, hint=hint, version_key=version_key, error=error)


def check_version(doc: dict[str, Any], name: str, what: str, reads: tuple[int, ...], upgrade: Upgrade | None = None, *,
                  hint: str, version_key: str = "format_version", error: type[TldeployError] = TldeployError) -> dict[str, Any]:
    """The version policy of every tldeploy file format, written down once: a document carries an
    integer version; this tldeploy writes `max(reads)` and reads the versions in `reads`, an older
    one upgraded by `upgrade(doc, version)` to what the current version says (a copy; `doc` as it
    is when `upgrade` is None: the current reader still understands it); a newer one is refused
    (upgrade tldeploy), an older one no longer in `reads` too (make the file again)."""
    version, current = doc.get(version_key), max(reads)
    if not isinstance(version, int) or isinstance(version, bool) or version not in reads:
        fix = "upgrade tldeploy" if isinstance(version, int) and version > current else hint
        raise error(f"{name} has {what} version {version}; this tldeploy reads versions {', '.join(map(str, reads))}; {fix}")
    if version < current and upgrade is not None:
        doc = upgrade(doc, version)
    return doc
