"""The CLIP image processor class to build: the one that needs no torchvision.

transformers 5 made ``CLIPImageProcessor`` the torchvision backend; without torchvision it falls back to
``CLIPImageProcessorPil`` with a warning the user cannot act on. The PIL class is the processor CLIP was
published with (the same numbers whether or not torchvision is installed), so we build it explicitly; older
transformers only have ``CLIPImageProcessor``, which is that PIL processor.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any


def clip_image_processor_class() -> Any:
    """``transformers.CLIPImageProcessorPil`` where it exists, else ``transformers.CLIPImageProcessor``; both read
    and write the same ``preprocessor_config.json``."""
    import transformers

    pil = getattr(transformers, "CLIPImageProcessorPil", None)
    return pil if pil is not None else transformers.CLIPImageProcessor


TORCHVISION_FALLBACK = "requires torchvision (not installed); falling back to"
"""The part of transformers' warning when something reads ``transformers.<Name>ImageProcessor`` without torchvision
(diffusers' pipeline modules do so on import)."""


class _DropTorchvisionFallback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return TORCHVISION_FALLBACK not in record.getMessage()


@contextlib.contextmanager
def no_torchvision_fallback_warning() -> Iterator[None]:
    """Drop exactly transformers' "requires torchvision (not installed); falling back" warning while the block runs
    (e.g. around importing diffusers' Safe Latent Diffusion module, which names ``CLIPImageProcessor``); every
    other message of transformers passes."""
    logger = logging.getLogger("transformers.utils.import_utils")
    drop = _DropTorchvisionFallback()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)
