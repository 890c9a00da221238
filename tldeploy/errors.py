"""Errors a user can fix. The CLI prints them as one line and exits non-zero."""

from __future__ import annotations


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
