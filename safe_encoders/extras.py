"""Optional dependencies, imported only when a feature needs them, with an error naming the pip extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import SafeEncodersError


class MissingExtraError(SafeEncodersError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def require(module: str, extra: str, *, feature: str) -> ModuleType:
    """Import `module` or raise `MissingExtraError` telling how to install it (`pip install safe-encoders[extra]`)."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingExtraError(
            f"{feature} needs the '{module.split('.')[0]}' package, which is not installed: "
            f"pip install 'safe-encoders[{extra}]'  ({error})"
        ) from error
