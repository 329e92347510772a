"""One clear line per user error, for ``python -m eval`` and ``python -m train`` (see :mod:`.program`).

A command that fails because of what the user gave it (a project error, a path that does not exist, a model
that cannot be read, a refused pickle, a full disk) ends with one line on stderr naming the argument, its
value and what to do, and exit status 2. ``--debug`` shows the traceback instead. Anything else (a bug) is
raised as usual.
"""

from __future__ import annotations

import argparse
import errno
import pickle
import traceback
from pathlib import Path

from safetensors import SafetensorError

from safe_encoders.errors import SafeEncodersError

OURS = ("safe_encoders", "eval", "train")
"""Packages whose deliberate ValueErrors (input validation) are user errors."""

EXIT_USER_ERROR = 2


def _fix(error: BaseException) -> str | None:
    """What to do about an error that does not say it itself."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return "free some disk space (or choose another output folder) and run the same command again"
    if isinstance(error, PermissionError):
        return "check the permissions of that path"
    if isinstance(error, pickle.UnpicklingError):
        return "the file is a pickle that cannot be read without running code: convert it to .safetensors"
    if isinstance(error, SafetensorError):
        return "the file is not a readable safetensors file (truncated or damaged?): write or download it again"
    if isinstance(error, ValueError) and _raised_in_our_code(error):
        return None  # our validation messages say what is allowed
    return (
        "pass an existing local file or folder, or a Hub id (owner/name) that is reachable or already in the "
        "Hugging Face cache when offline"
    )


def _raised_in_our_code(error: BaseException) -> bool:
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return False
    parts = Path(frames[-1].filename).parts
    return any(part in OURS for part in parts[-3:-1])


def _is_user_error(error: BaseException, mentioned: str | None) -> bool:
    if isinstance(error, (SafeEncodersError, OSError, SafetensorError, pickle.UnpicklingError)):
        return True
    if isinstance(error, ValueError):  # libraries refuse a bad path or id with ValueError (diffusers, hub ids)
        return mentioned is not None or _raised_in_our_code(error)
    return False


def _source_like(text: str) -> bool:
    """A path, a Hub id, a file name: specific enough to be found in a message (not "sd", "test", "0")."""
    return any(c in text for c in "/\\.") or len(text) >= 8


def _argument_in(message: str, args: argparse.Namespace) -> tuple[str, str] | None:
    """The command-line argument whose value the message names (the longest match), as (--flag, value)."""
    best: tuple[str, str] | None = None
    for name, value in vars(args).items():
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if not isinstance(v, (str, Path)):
                continue
            text = str(v)
            key, _, named = text.rpartition("=")  # a key=value override (or NAME=SOURCE): its value, or its key
            if isinstance(v, Path) or not key:
                hit = _source_like(text) and text in message
            else:
                hit = (_source_like(named) and named in message) or (name == "overrides" and key in message)
            if hit and (best is None or len(text) > len(best[1])):
                best = ("--" + name.replace("_", "-") if name != "overrides" else "override", text)
    return best


def one_line(error: BaseException, args: argparse.Namespace) -> str | None:
    """The one-line message for a user error (None if ``error`` is not one: a bug keeps its traceback)."""
    message = " ".join(str(error).split()).rstrip(".") or type(error).__name__
    argument = _argument_in(message, args)
    if not _is_user_error(error, argument and argument[1]):
        return None
    if len(message) > 600:
        message = message[:597] + "..."
    where = f"{argument[0]} {argument[1]}: " if argument else ""
    fix = None if isinstance(error, SafeEncodersError) else _fix(error)  # ours say what to do
    fix = f"; {fix}" if fix else ""
    return f"error: {where}{message}{fix}"


def add_debug_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
