"""The installed `safe-encoders` command: one subcommand per job, registered as data.

safe-encoders scan   DATA --out FOLDER [--model hysac] [--embeddings] ...
safe-encoders search SCAN_FOLDER --text "a quiet beach" [--safety keep|redirect|filter] ...

Errors the user can fix (a missing file, a bad option, a scan folder of another configuration) are
printed as one line and exit with status 2; anything else is a bug and keeps its traceback.
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
    from . import app, scan, search

    return {command.name: command for command in (scan.COMMAND, search.COMMAND, app.COMMAND)}


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="safe-encoders",
        description="HySAC at dataset scale: scan a collection for unsafe content, and search it safely.",
        epilog="Run 'safe-encoders COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"safe-encoders {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in commands().values():
        sub = subparsers.add_parser(
            command.name,
            help=command.help,
            description=command.description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


# What a user can fix: printed as one line. (OSError: an unreadable query image or output folder;
# ImportError: a missing optional extra.)
USER_ERRORS: tuple[type[BaseException], ...] = (SafeEncodersError, OSError, ImportError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except USER_ERRORS as error:
        message = " ".join(str(error).split())
        print(f"safe-encoders {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"safe-encoders {args.command}: interrupted (run the same command again to resume)", file=sys.stderr)
        return 130


def entry_point() -> None:
    """`[project.scripts]` target."""
    sys.exit(main())
