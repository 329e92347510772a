"""One command-line program built from :class:`~safe_encoders.cli.Command` objects, run with one error policy.

``safe-encoders``, ``python -m eval`` and ``python -m train`` are each a list of commands given to
:func:`build_program` and run by :func:`run_program`: every program has ``--debug``; an error the user can fix
is printed as one line with exit status 2 (``--debug``: the traceback); anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from ..threads import configure_threads
from .errors import EXIT_USER_ERROR, add_debug_option, one_line
from .types import positive_int

if TYPE_CHECKING:
    from . import Command

ErrorLine = Callable[[BaseException, argparse.Namespace], "str | None"]
"""The one line for a user error (None: not a user error, the traceback is kept)."""


def build_program(
    prog: str,
    description: str,
    commands: Iterable[Command],
    *,
    epilog: str | None = None,
    add_global: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.ArgumentParser:
    """A parser with ``--debug`` (and what ``add_global`` adds) and one subcommand per command."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_debug_option(parser)
    parser.add_argument(
        "--threads",
        dest="cpu_threads",  # not "threads": a command may have a --threads option of its own
        type=positive_int,
        metavar="N",
        help="CPU threads for torch and FAISS (default: OMP_NUM_THREADS, else the usable CPUs)",
    )
    if add_global is not None:
        add_global(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in commands:
        sub = subparsers.add_parser(
            command.name,
            help=command.help,
            description=command.description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(sub)
        sub.set_defaults(_run_command=command.run)  # not "run": a command may have a --run option
    return parser


def run_program(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
    *,
    error_line: ErrorLine = one_line,
    before: Callable[[argparse.Namespace], None] | None = None,
    interrupted: str | None = None,
) -> int:
    """Parse ``argv`` and run its command. A user error (``error_line`` gives its line) is printed on stderr and
    returns 2 unless ``--debug``; with ``interrupted``, Ctrl-C prints that line and returns 130."""
    args = parser.parse_args(argv)
    try:
        configure_threads(args.cpu_threads)  # one policy for every program: a busy machine slows it in proportion
        if before is not None:
            before(args)
        return args._run_command(args)
    except KeyboardInterrupt:
        if interrupted is None or args.debug:
            raise
        print(interrupted.format(command=args.command), file=sys.stderr)
        return 130
    except Exception as error:
        if args.debug:
            raise
        line = error_line(error, args)
        if line is None:
            raise
        print(line, file=sys.stderr)
        return EXIT_USER_ERROR
