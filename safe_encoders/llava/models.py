"""LLaVA models: the CLIP vision tower is the slot; the language model and projector are never touched.

Covers transformers' `LlavaForConditionalGeneration` (LLaVA 1.5), `LlavaNextForConditionalGeneration`
(LLaVA 1.6, any-resolution tiling) and the original `llava` package's models (`llava-torch` on PyPI:
`LlavaLlamaForCausalLM` and friends), where the `CLIPVisionModel` sits inside a `CLIPVisionTower`
wrapper that has a CLIP `config` of its own but no weights of its own, and that is built empty
(`delay_load`) until `load_model()` runs. The tower is found by walking the modules, so `llava` itself is
never imported. The image processor, `vision_feature_layer` / `mm_vision_select_layer` and the feature
selection stay as they are: Safe-CLIP keeps the original tower's feature space.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..dispatch import EncoderSlot, TargetHandler
from ..swap import encoder_kind
from ..targets import unwrap

_SUPPORTED_TOWERS = "CLIP ViT-L/14 at 224 or 336 px, CLIP ViT-H/14"
# The original llava package's modules (`llava.model.multimodal_encoder.clip_encoder.CLIPVisionTower`, ...).
_ORIGINAL_PACKAGE = "llava."


def is_llava_model(obj: Any) -> bool:
    """A torch module whose class (or a base class) is a LLaVA one by name, or any module of the original `llava`
    package (its `CLIPVisionTower` on its own): `llava` is not imported."""
    if not isinstance(obj, nn.Module):
        return False
    return any("llava" in cls.__name__.lower() for cls in type(obj).__mro__) or _from_original_package(obj)


def vision_tower_slots(model: nn.Module) -> list[EncoderSlot]:
    """One slot per vision tower found in `model` (the outermost vision model of each branch)."""
    slots: list[EncoderSlot] = []
    taken: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in taken):
            continue
        label = f"model.{name}" if name else "model"
        if _lends_its_config(module):
            continue  # llava's CLIPVisionTower: the model it wraps is the tower (the walk reaches it next)
        if _is_clip_vision_model(module):
            slots.append(EncoderSlot(label=label, module=module, kind="vision"))
            taken.append(name)
        elif encoder_kind(module) == "vision":  # a CLIP config and no model to hold weights: not loaded yet
            slots.append(EncoderSlot(label=label, module=None, kind=None, why_not=_not_loaded(module)))
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


def _is_clip_vision_model(module: nn.Module) -> bool:
    """A transformers CLIP vision model itself (or a `torch.compile` of one), not a wrapper lending its config."""
    from transformers import PreTrainedModel

    return encoder_kind(module) == "vision" and isinstance(unwrap(module), PreTrainedModel)


def _lends_its_config(module: nn.Module) -> bool:
    """A wrapper whose `config` is the one of a transformers model inside it, as llava's loaded CLIPVisionTower."""
    from transformers import PreTrainedModel

    if isinstance(unwrap(module), PreTrainedModel) or getattr(module, "config", None) is None:
        return False
    return any(isinstance(unwrap(sub), PreTrainedModel) for sub in module.modules() if sub is not module)


def _not_loaded(wrapper: nn.Module) -> str:
    name = getattr(wrapper, "vision_tower_name", None)
    where = f" (its weights would come from {name})" if name else ""
    return (
        f"{type(wrapper).__name__} holds no CLIPVisionModel yet: the original llava package builds it with "
        f"delay_load and loads it later{where}. Load the tower first: model.get_vision_tower().load_model(), "
        "as llava.model.builder.load_pretrained_model does, then call make_safe"
    )


def _from_original_package(module: nn.Module) -> bool:
    return type(module).__module__.startswith(_ORIGINAL_PACKAGE)


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
