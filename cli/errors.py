"""Errors to one line, once, for both command lines (`spanrec`, `spanrecctl`):
exit 2 for usage and settings, 1 for runtime failures, 130 when interrupted.
SPANREC_DEBUG=1 shows tracebacks."""
from __future__ import annotations

import os
import sys
from typing import Sequence

import click

from cli import output


def run(group: click.Group, prog: str, argv: list[str] | None,
        usage_errors: Sequence[type[BaseException]], failures: Sequence[type[BaseException]]) -> None:
    try:
        group.main(args=argv, prog_name=prog, standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        sys.exit(2)
    except click.UsageError as exc:
        cmd = exc.ctx.command_path if exc.ctx else prog
        output.error(f"{exc.format_message()} (see '{cmd} --help')")
        sys.exit(2)
    except click.exceptions.Abort:
        output.error("aborted")
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        output.error(exc.format_message())
        sys.exit(exc.exit_code)
    except tuple(usage_errors) as exc:
        output.error(str(exc))
        sys.exit(2)
    except tuple(failures) as exc:
        output.error(str(exc))
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if os.environ.get("SPANREC_DEBUG"):
            raise
        output.error(f"unexpected {type(exc).__name__}: {exc} (SPANREC_DEBUG=1 shows the traceback)")
        sys.exit(1)
