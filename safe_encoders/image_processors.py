"""The CLIP image processor class to build: the one that needs no torchvision.

transformers 5 made ``CLIPImageProcessor`` the torchvision backend; without torchvision it falls back to
``CLIPImageProcessorPil`` with a warning the user cannot act on. The PIL class is the processor CLIP was
published with (the same numbers whether or not torchvision is installed), so we build it explicitly; older
transformers only have ``CLIPImageProcessor``, which is that PIL processor.
"""

from __future__ import annotations

from typing import Any


def clip_image_processor_class() -> Any:
    """``transformers.CLIPImageProcessorPil`` where it exists, else ``transformers.CLIPImageProcessor``; both read
    and write the same ``preprocessor_config.json``."""
    import transformers

    pil = getattr(transformers, "CLIPImageProcessorPil", None)
    return pil if pil is not None else transformers.CLIPImageProcessor
