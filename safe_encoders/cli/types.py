"""Argparse types that validate a number where it is parsed: a bad value is refused before anything runs.

Every numeric option of ``safe-encoders``, ``python -m eval`` and ``python -m train`` uses one of these (a test
walks the parsers): NaN and infinity are never accepted, and the name says the range.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _number(text: str, kind: type, what: str) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """A whole number >= 1 (a count, a size, a batch)."""
    value = _number(text, int, "a whole number >= 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return int(value)


def nonnegative_int(text: str) -> int:
    """A whole number >= 0 (a seed, an optional count where 0 means none)."""
    value = _number(text, int, "a whole number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value}")
    return int(value)


def finite_float(text: str) -> float:
    """Any finite number (NaN and infinity refused)."""
    return float(_number(text, float, "a finite number"))


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def nonnegative_float(text: str) -> float:
    """A finite number >= 0."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def probability(text: str) -> float:
    """A number in [0, 1] (a threshold on a probability or score)."""
    value = finite_float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text}")
    return value


NUMERIC_TYPES: dict[Callable[[str], object], str] = {
    positive_int: "positive",
    nonnegative_int: "nonnegative",
    finite_float: "any",
    positive_float: "positive",
    nonnegative_float: "nonnegative",
    probability: "nonnegative",
}
"""The validating numeric types and the sign they require (a parser walk checks each option against it)."""


def comma_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: a comma-separated command-line value."""
    return [t.strip() for t in text.split(",") if t.strip()]
