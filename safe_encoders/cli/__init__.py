"""The installed `safe-encoders` command: one subcommand per job, registered as data.

safe-encoders scan   DATA --out FOLDER [--model hysac] [--embeddings] ...
safe-encoders search SCAN_FOLDER --text "a quiet beach" [--safety keep|redirect|filter] ...
safe-encoders verify PATH_OR_HUB_ID [--json]    check a saved pipeline's encoders against the trust store
safe-encoders trust  PATH_OR_HUB_ID | --list    trust a checkpoint on this machine

Errors the user can fix (a missing file, a bad option, a scan folder of another configuration) are
printed as one line and exit with status 2 (``--debug``: the traceback); anything else is a bug and keeps its
traceback. ``python -m eval`` and ``python -m train`` are built the same way: a list of :class:`Command`
objects given to :func:`~safe_encoders.cli.program.build_program`, run by
:func:`~safe_encoders.cli.program.run_program`; their numeric options use :mod:`safe_encoders.cli.types`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import SafeEncodersError


@dataclass(frozen=True)
class Command:
    """A subcommand: its name, one-line help, longer description, and how to add its arguments and run it."""

    name: str
    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def commands() -> dict[str, Command]:
    from . import app, scan, search, trust, verify

    listed = (scan.COMMAND, search.COMMAND, verify.COMMAND, trust.COMMAND, app.COMMAND)
    return {command.name: command for command in listed}


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    from .program import build_program

    parser = build_program(
        "safe-encoders",
        "HySAC at dataset scale: scan a collection for unsafe content, and search it safely.",
        commands().values(),
        epilog="Run 'safe-encoders COMMAND --help' for the options of a command.",
        add_global=lambda p: p.add_argument("--version", action="version", version=f"safe-encoders {__version__}"),
    )
    return parser


# What a user can fix: printed as one line. (OSError: an unreadable query image or output folder;
# ImportError: a missing optional extra.)
USER_ERRORS: tuple[type[BaseException], ...] = (SafeEncodersError, OSError, ImportError)


def main(argv: Sequence[str] | None = None) -> int:
    from .program import run_program

    return run_program(
        build_parser(),
        argv,
        error_line=_error_line,
        interrupted="safe-encoders {command}: interrupted (run the same command again to resume)",
    )


def _error_line(error: BaseException, args: argparse.Namespace) -> str | None:
    if not isinstance(error, USER_ERRORS):
        return None
    message = " ".join(str(error).split())
    return f"safe-encoders {args.command}: error: {message}"


def entry_point() -> None:
    """`[project.scripts]` target."""
    sys.exit(main())
