"""The pickle policy, here and only here: a pickle weight file is read with `torch.load(weights_only=True)`
(memory-mapped where the file allows it) or refused; safetensors is preferred."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..errors import UnsafeFormatError

logger = logging.getLogger("safe_encoders")

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".p")


def load_pickle_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read a pickle weight file without executing code (`weights_only=True`), or refuse it."""
    logger.warning(
        "%s is a pickle file; reading it with torch.load(weights_only=True), which refuses anything but "
        "tensors. Prefer a safetensors copy.",
        path,
    )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        try:  # files in the legacy (non-zip) format cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise _refuse_pickle(path, error) from error
    except Exception as error:
        raise _refuse_pickle(path, error) from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UnsafeFormatError(f"{path} does not hold a plain state dict of tensors; refusing it.")
    return state


def _refuse_pickle(path: Path, error: Exception) -> UnsafeFormatError:
    # torch's own message suggests retrying with weights_only=False; we do not pass that advice on.
    return UnsafeFormatError(
        f"Refusing {path}: it is a pickle that torch.load(weights_only=True) cannot read "
        f"({type(error).__name__}), so loading it would mean executing arbitrary code. "
        "Use a safetensors version of the checkpoint."
    )
