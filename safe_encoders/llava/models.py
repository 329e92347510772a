"""LLaVA models: the CLIP vision tower is the slot; the language model and projector are never touched.

Covers transformers' `LlavaForConditionalGeneration` (LLaVA 1.5), `LlavaNextForConditionalGeneration`
(LLaVA 1.6, any-resolution tiling) and the original `llava` package's models
(`LlavaLlamaForCausalLM` and friends), where a `CLIPVisionModel` sits inside a wrapper object. The
tower is found by walking the modules, so `llava` itself is never imported. The image processor,
`vision_feature_layer` and `vision_feature_select_strategy` stay as they are: Safe-CLIP keeps the
original tower's feature space.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..dispatch import EncoderSlot, TargetHandler
from ..swap import encoder_kind

_SUPPORTED_TOWERS = "CLIP ViT-L/14 at 224 or 336 px, CLIP ViT-H/14"


def is_llava_model(obj: Any) -> bool:
    """Any torch module whose class (or a base class) is a LLaVA one, by name: `llava` is not imported."""
    return isinstance(obj, nn.Module) and any("llava" in cls.__name__.lower() for cls in type(obj).__mro__)


def vision_tower_slots(model: nn.Module) -> list[EncoderSlot]:
    """One slot per vision tower found in `model` (the outermost vision model of each branch)."""
    slots: list[EncoderSlot] = []
    taken: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in taken):
            continue
        label = f"model.{name}" if name else "model"
        if encoder_kind(module) == "vision":
            slots.append(EncoderSlot(label=label, module=module, kind="vision"))
            taken.append(name)
        elif _is_other_vision_tower(module):
            model_type = getattr(getattr(module, "config", None), "model_type", "unknown")
            why = (
                f"{type(module).__name__} (model_type {model_type}) is not a CLIP vision tower; Safe-CLIP "
                f"exists for {_SUPPORTED_TOWERS} only, so SigLIP-based and other LLaVA variants are unsupported"
            )
            slots.append(EncoderSlot(label=label, module=module, kind=None, why_not=why))
            taken.append(name)
    if not slots:
        why = (
            "no vision tower found (a transformers CLIPVisionModel inside the model). With the original llava "
            "package, load the tower first: model.get_vision_tower().load_model()"
        )
        slots.append(EncoderSlot(label="model", module=None, kind=None, why_not=why))
    return slots


def _is_other_vision_tower(module: nn.Module) -> bool:
    model_type = str(getattr(getattr(module, "config", None), "model_type", ""))
    if model_type.endswith("vision_model") and model_type != "clip_vision_model":
        return True
    return type(module).__name__.endswith(("VisionModel", "VisionTransformer")) and encoder_kind(module) is None


def _install_gate(handle: Any) -> None:
    from ..hysac.gate import install_llava_gate  # lazy: the gate imports this module

    install_llava_gate(handle)


LLAVA_MODEL = TargetHandler(
    name="LLaVA models (transformers LlavaForConditionalGeneration / LlavaNextForConditionalGeneration, "
    "the original llava package's LlavaLlamaForCausalLM, ...)",
    matches=is_llava_model,
    slots=vision_tower_slots,
    install_gate=_install_gate,
)
