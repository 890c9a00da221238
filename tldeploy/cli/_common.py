"""What every command module shares: the `cli` group, its context settings and logging."""

from __future__ import annotations

import logging
import sys

import click

from tldeploy import __version__

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(message)s" if not quiet else "%(levelname)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    # Warnings (skipped files, ...) must show even with --quiet.
    logging.getLogger("tldeploy").setLevel(logging.INFO if not quiet else logging.WARNING)


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="tldeploy")
def cli() -> None:
    """tldeploy: transfer learning to a deployed, verified image classifier.

    \b
    Example, the whole train stage offline:
      tldeploy data digits data/digits
      tldeploy train data/digits -o runs/digits
    \b
    Audio through the same image backbone:
      tldeploy data tones data/tones
      tldeploy train data/tones -o runs/tones --modality audio --mode finetune
    """


def _int_list(value: str, flag: str) -> tuple[int, ...]:
    return _number_list(value, flag, int, "integers such as 1,8,32")


def _float_list(value: str, flag: str) -> tuple[float, ...]:
    return _number_list(value, flag, float, "numbers such as 1,4")


def _number_list(value: str, flag: str, kind, example: str) -> tuple:
    from tldeploy.errors import ConfigError

    try:
        out = tuple(kind(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated {example}, got {value!r}") from None
    if not out:
        raise ConfigError(f"{flag} needs at least one value")
    return out
