"""One error family. Each member also derives from the built-in exception a caller would expect."""

from __future__ import annotations

from typing import Any


class SafeEncodersError(Exception):
    """Base class of every error raised on purpose by safe_encoders."""


class UnsupportedModelError(SafeEncodersError, TypeError):
    """The object handed to `make_safe` is not something we know how to make safe."""


class ArchitectureMismatchError(SafeEncodersError, ValueError):
    """The checkpoint's encoder does not have the shape of the encoder it should replace."""


class PartialSwapError(SafeEncodersError, ValueError):
    """Only some encoders of the target have a Safe-CLIP replacement and the caller did not opt in."""


class InvalidArgumentError(SafeEncodersError, ValueError, TypeError):
    """An argument has a value or type the function does not accept; the message names it and what it accepts."""


class CheckpointNotFoundError(SafeEncodersError, OSError):
    """A checkpoint (registry name, Hub id, folder or file) cannot be found or reached."""


class CorruptCheckpointError(SafeEncodersError, ValueError):
    """A checkpoint file exists but its content is damaged or inconsistent."""


class SwapVerificationError(SafeEncodersError, RuntimeError):
    """After a swap, the weights the forward pass reads are not the checkpoint's (the originals were restored)."""


class UnsafeFormatError(SafeEncodersError, ValueError):
    """A weight file is a pickle that cannot be read without executing code."""


class UnsafeContentError(SafeEncodersError, ValueError):
    """A safety gate with a "block" policy found unsafe content. `report` holds the verdicts."""

    def __init__(self, message: str, report: Any) -> None:
        super().__init__(message)
        self.report = report
