"""Errors a user can fix. The CLI prints them as one line and exits non-zero."""

from __future__ import annotations

import errno


class TldeployError(Exception):
    """Base class: the message says what was expected, what was found and how to fix it."""


class DataError(TldeployError):
    """The data on disk is missing, empty or unusable."""


class CheckpointError(TldeployError):
    """A checkpoint is missing, truncated, foreign or incompatible."""


class ConfigError(TldeployError):
    """Options that cannot work together or values out of range."""


class OutputExistsError(TldeployError):
    """An artifact would be overwritten without --force."""


class MissingDependencyError(TldeployError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, extra: str | None = None, purpose: str = "") -> None:
        how = f"pip install 'tldeploy[{extra}]'" if extra else f"pip install {package}"
        why = f" (needed for {purpose})" if purpose else ""
        super().__init__(f"{package} is not installed{why}; install it with: {how}")


# What the operating system says about a path, in the words a user acts on.
_REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied (operation not permitted)",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for this file system",
    errno.ENOTDIR: "not a directory",
    errno.EISDIR: "is a directory, not a file",
    errno.ENOENT: "no such file or directory",
    errno.ENAMETOOLONG: "file name too long",
    errno.ELOOP: "too many levels of symbolic links",
    errno.EIO: "input/output error",
    errno.EEXIST: "already exists",
}


def os_error_line(e: OSError) -> str | None:
    """One line for an operating-system error on a path (the path, the reason, what to do), or None
    when the error names no path or is not one of these reasons: that is a bug, not the user's input."""
    reason = _REASONS.get(e.errno or -1)
    if e.filename is None or reason is None:
        return None
    where = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 else "")
    fix = ("free space or choose another location" if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
           else "check the path, or choose another location")
    return f"{where}: {reason}; {fix}"


def is_user_path_error(e: BaseException) -> bool:
    """An OSError the CLI reports as one line about the path (permission denied, not a directory,
    ...): a reader that turns its failures into "corrupt file" lets this one through instead."""
    return isinstance(e, OSError) and os_error_line(e) is not None
