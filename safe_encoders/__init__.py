"""safe-encoders: drop-in Safe-CLIP encoders for Stable Diffusion and LLaVA.

from safe_encoders import make_safe
pipe = make_safe(StableDiffusionPipeline.from_pretrained("CompVis/stable-diffusion-v1-4"))
model = make_safe(LlavaForConditionalGeneration.from_pretrained("llava-hf/llava-1.5-7b-hf"))
"""

from __future__ import annotations

import logging

__version__ = "0.1.0"

from .threads import launched_as_command, set_openmp_env_defaults

if launched_as_command():  # before torch is imported: the OpenMP runtimes read these when they start
    set_openmp_env_defaults()

from .convert import convert_checkpoint, export_encoder
from .diffusers import DIFFUSERS_PIPELINE
from .dispatch import BARE_ENCODER, is_safe, make_safe, register_handler, swap_report
from .errors import (
    ArchitectureMismatchError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    InvalidArgumentError,
    PartialSwapError,
    SafeEncodersError,
    SwapVerificationError,
    UnsafeContentError,
    UnsafeFormatError,
    UnsupportedModelError,
)
from .llava import LLAVA_MODEL
from .loading import load_text_encoder, load_vision_encoder
from .registry import Checkpoint, find_checkpoint, get_checkpoint, list_checkpoints
from .trust import EncoderVerdict, trust_checkpoint, trust_dir, verify_encoder

register_handler(DIFFUSERS_PIPELINE)
register_handler(LLAVA_MODEL)
register_handler(BARE_ENCODER)

logging.getLogger("safe_encoders").addHandler(logging.NullHandler())

__all__ = [
    "ArchitectureMismatchError",
    "Checkpoint",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "EncoderVerdict",
    "InvalidArgumentError",
    "PartialSwapError",
    "SafeEncodersError",
    "SwapVerificationError",
    "UnsafeContentError",
    "UnsafeFormatError",
    "UnsupportedModelError",
    "__version__",
    "convert_checkpoint",
    "export_encoder",
    "find_checkpoint",
    "get_checkpoint",
    "is_safe",
    "list_checkpoints",
    "load_text_encoder",
    "load_vision_encoder",
    "make_safe",
    "swap_report",
    "trust_checkpoint",
    "trust_dir",
    "verify_encoder",
]
