"""What every record shares: its error, and the checks that name the file and the field."""

from __future__ import annotations

from typing import Any

from tldeploy.errors import TldeployError


class RecordError(TldeployError):
    """A record whose fields are missing or of the wrong type."""


def _need(cond: bool, source: str, what: str, hint: str) -> None:
    if not cond:
        raise RecordError(f"{source}: {what}; {hint}")


def _str(doc: dict[str, Any], key: str, source: str, hint: str) -> str:
    v = doc.get(key)
    _need(isinstance(v, str) and v != "", source, f"'{key}' must be a non-empty string, found {v!r}", hint)
    return str(v)


def _obj(doc: dict[str, Any], key: str, source: str, hint: str) -> dict[str, Any] | None:
    v = doc.get(key)
    _need(v is None or isinstance(v, dict), source, f"'{key}' must be an object or null, found {type(v).__name__}", hint)
    return v

def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
