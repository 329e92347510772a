"""Errors raised on purpose by ``eval``; members of the safe_encoders error family."""

from __future__ import annotations

from types import ModuleType

from safe_encoders.errors import SafeEncodersError


class EvalError(SafeEncodersError):
    """Base class of every error raised on purpose by ``eval``."""


class PromptSetError(EvalError, ValueError):
    """A prompt file or dataset is missing columns or holds values we cannot read."""


class UnsafePickleError(EvalError, ValueError):
    """A pickle asks for something other than a plain numeric numpy array."""


class MissingDependencyError(EvalError, ImportError):
    """An optional dependency of the evaluation harness is not installed."""


class StoreError(EvalError, ValueError):
    """A results store is inconsistent with the run asked for."""


class ConditionError(EvalError, ValueError):
    """A generation condition name or its options are not valid."""


class RetrievalError(EvalError, ValueError):
    """A model spec, the data or a cached embedding file is not usable."""


class NSFWRetrievalError(EvalError, ValueError):
    """Missing or empty image folders, caption files or unsafe texts."""


def require(module: str, *, feature: str) -> ModuleType:
    """Import an optional dependency, or raise an error that names the pip extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{feature} needs the optional package {module!r}, which is not installed; "
            f"install it with: pip install 'safe-encoders[eval]'"
        ) from exc
