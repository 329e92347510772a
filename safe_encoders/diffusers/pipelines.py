"""Diffusers pipelines: every `text_encoder*` component is a slot.

Works for any `DiffusionPipeline` by its components, not its class: SD 1.x / 2.x and their
img2img / inpaint / SLD (`StableDiffusionPipelineSafe`) variants have one CLIP `text_encoder`;
SDXL adds OpenCLIP bigG as `text_encoder_2` (no Safe-CLIP exists for it: a partial swap); SD 3 and
Flux add T5 encoders (not CLIP: also partial). Image encoders (IP-Adapter) and the safety checker
are not touched.
"""

from __future__ import annotations

import sys
from typing import Any

from ..dispatch import EncoderSlot, TargetHandler
from ..swap import encoder_kind


def is_diffusers_pipeline(obj: Any) -> bool:
    if "diffusers" not in sys.modules:  # a pipeline exists only once diffusers is imported: do not import it
        return False
    try:
        from diffusers import DiffusionPipeline
    except ImportError:  # diffusers is a dependency, but keep the check harmless without it
        return False
    return isinstance(obj, DiffusionPipeline)


def pipeline_slots(pipe: Any) -> list[EncoderSlot]:
    """The text encoders of `pipe`, in component order."""
    slots = []
    for name, component in pipe.components.items():
        if not name.startswith("text_encoder") or component is None:
            continue
        kind = encoder_kind(component)
        if kind == "text":
            tokenizer = pipe.components.get("tokenizer" + name.removeprefix("text_encoder"))
            slots.append(EncoderSlot(label=f"pipe.{name}", module=component, kind="text", tokenizer=tokenizer))
        else:
            why = f"{type(component).__name__} is not a CLIP text encoder; no Safe-CLIP exists for it"
            slots.append(EncoderSlot(label=f"pipe.{name}", module=component, kind=None, why_not=why))
    return slots


def _install_gate(handle: Any) -> None:
    from ..hysac.gate import install_pipeline_gate  # lazy: the gate imports this module

    install_pipeline_gate(handle)


DIFFUSERS_PIPELINE = TargetHandler(
    name="diffusers pipelines with a CLIP text_encoder (SD 1.x, SD 2.x, SDXL, StableDiffusionPipelineSafe, ...)",
    matches=is_diffusers_pipeline,
    slots=pipeline_slots,
    install_gate=_install_gate,
)
