"""The `tldeploy` command line: one module per stage's commands over the shared `cli` group; each
command is a thin wrapper over its stage's library function. Importing this needs no torch,
onnxruntime or numpy: every command imports its stage inside its body."""

from __future__ import annotations

import sys

import click

from tldeploy.cli import bench, data, demo, deploy, engines, export, plugins, predict, qat, shift, train  # noqa: F401  (they register the commands)
from tldeploy.cli._common import cli
from tldeploy.errors import TldeployError, os_error_line

__all__ = ["cli", "main"]


# ---------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors become one line on stderr and a non-zero exit."""
    try:
        rc = cli.main(args=argv, prog_name="tldeploy", standalone_mode=False)
        if isinstance(rc, int):  # a command's click.exceptions.Exit(n), returned as n without standalone mode
            return rc
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as e:
        hint = ""
        if isinstance(e, click.UsageError) and e.ctx is not None:
            hint = f" (see '{e.ctx.command_path} --help')"
        click.echo(f"error: {e.format_message()}{hint}", err=True)
        return e.exit_code
    except TldeployError as e:
        click.echo(f"error: {e}", err=True)
        return 1
    except OSError as e:
        line = os_error_line(e)
        if line is None:  # not about a path the user gave: a programming error keeps its traceback
            raise
        click.echo(f"error: {line}", err=True)
        return 1
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
