"""The gate on a LLaVA model: the images each CLIP vision tower is about to see are checked first.

A forward pre-hook on each tower scores its `pixel_values` (for LLaVA-Next: every tile) and applies
`image_policy`: "block" raises, "black" / "blur" change what the model sees, "flag" only reports. A
pre-hook on the model itself refuses `inputs_embeds` (the caller's own embeddings, which may carry image
features the tower never saw) and, with transformers 5, `mm_encoder_outputs` the tower did not just
compute (image features made elsewhere) unless `allow_unchecked` names them.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import torch
from torch import nn

from ...errors import UnsupportedModelError
from .core import GateHandle, InputCheck, allow_unchecked, apply_image_policy, refuse_unchecked
from .images import ImageBatch, channel

INPUTS_EMBEDS = "inputs_embeds"
MM_OUTPUTS = "mm_encoder_outputs"


def is_llava(obj: Any) -> bool:
    from ...llava.models import is_llava_model

    return is_llava_model(obj)


def install_llava_gate(handle: GateHandle) -> None:
    """`TargetHandler.install_gate` for LLaVA models with a CLIP vision tower."""
    from ...llava.models import vision_tower_slots

    model, gate = handle.target, handle.gate
    towers = [slot for slot in vision_tower_slots(model) if slot.kind == "vision"]
    if not towers:
        raise UnsupportedModelError(f"add_safety_gate: found no CLIP vision tower in {type(model).__name__}.")
    if gate.prompt_policy not in ("off", "block") or gate.on_block != "raise":
        warnings.warn(
            "add_safety_gate: prompt_policy / on_block apply to diffusers pipelines; a LLaVA gate checks images.",
            UserWarning,
            stacklevel=4,
        )
    for slot in towers:
        hook = slot.module.register_forward_pre_hook(functools.partial(_tower_hook, handle), with_kwargs=True)
        handle.on_remove(hook.remove)
    if gate.image_policy != "off" and isinstance(model, nn.Module):
        hook = model.register_forward_pre_hook(functools.partial(_model_hook, handle), with_kwargs=True)
        handle.on_remove(hook.remove)


def _model_hook(handle: GateHandle, module: nn.Module, args: tuple, kwargs: dict) -> None:
    """Refuse the caller's own `inputs_embeds` (generate() passes input_ids unless the caller gave embeddings).

    The opt-out joins the report of this call's images: transformers 5 runs the tower before the model's
    forward (`fresh`), transformers 4 inside it (`carry`).
    """
    fresh = handle.state.pop("fresh", None)
    features = kwargs.get(MM_OUTPUTS)
    # transformers 5: generate() runs the tower (hooked) and passes its features on; a caller's own were never seen
    if isinstance(features, dict) and any(v is not None for v in features.values()) and fresh is None:
        name, why = MM_OUTPUTS, "they are image features computed without the gated vision tower"
    elif kwargs.get(INPUTS_EMBEDS) is not None:
        name, why = INPUTS_EMBEDS, "they may carry image features the vision tower never saw"
    else:
        return
    report = fresh if fresh is not None and fresh is handle.last_report else handle.new_report()
    if name in handle.gate.allow_unchecked:
        allow_unchecked(report, name, why)
        if report is not fresh:
            handle.state["carry"] = list(report.inputs)  # the towers' report of this forward starts with it
        return
    refuse_unchecked(report, name, why)


def _tower_hook(handle: GateHandle, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    gate = handle.gate
    report = handle.new_report()
    for check in handle.state.pop("carry", []):
        report.add(check)
    handle.state["fresh"] = report
    report.image_action = "off"
    if gate.image_policy == "off":
        report.add(InputCheck("pixel_values", "unchecked", "off", note="image_policy='off'"))
        return None
    positional = bool(args)
    pixel_values = args[0] if positional else kwargs.get("pixel_values")
    if pixel_values is None:
        report.image_action = "unchecked"
        return None
    pixels = pixel_values.detach().float().cpu()
    images = ((pixels * channel(gate.input_std, pixels)) + channel(gate.input_mean, pixels)).clamp(0, 1)
    batch = ImageBatch(list(images), restore=torch.stack)
    check, flags = apply_image_policy(handle, report, "pixel_values", batch, "the model was not run")
    report.images, report.image_action = check.verdicts, check.action
    if not flags.any() or gate.image_policy == "flag":
        return None
    changed = batch.restore(batch.pixels)
    normalised = (changed - channel(gate.input_mean, changed)) / channel(gate.input_std, changed)
    new_values = normalised.to(device=pixel_values.device, dtype=pixel_values.dtype)
    if positional:
        return (new_values, *args[1:]), kwargs
    return args, {**kwargs, "pixel_values": new_values}
