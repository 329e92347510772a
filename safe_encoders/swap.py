"""Putting an encoder's weights into an existing CLIP module, in place.

Weights are copied into the module's own tensors, so its dtype, device, wrappers and accelerate
hooks stay as they are and no second copy of the encoder is kept alive. Tensors that accelerate
offloaded (the parameter is on the `meta` device, the values live in the hook's `weights_map`) are
updated where they live.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import ArchitectureMismatchError, CorruptCheckpointError, UnsupportedModelError
from .format import PROJECTION, RECORD_KEY, module_names
from .registry import EncoderFingerprint, EncoderKind, fitting_checkpoint_names
from .sources import EncoderSource

logger = logging.getLogger("safe_encoders")


def encoder_kind(module: Any) -> EncoderKind | None:
    """ "text" / "vision" for transformers CLIP text / vision models (with or without projection), else None."""
    model_type = getattr(getattr(module, "config", None), "model_type", None)
    if not isinstance(module, nn.Module):
        return None
    return {"clip_text_model": "text", "clip_vision_model": "vision"}.get(model_type)


def has_projection(module: nn.Module, kind: EncoderKind) -> bool:
    return PROJECTION[kind] in module_names(module.state_dict().keys(), kind)


@dataclass(frozen=True)
class SwapPlan:
    """What will be copied where; built and checked before anything is changed."""

    label: str
    module: nn.Module
    source: EncoderSource
    names: dict[str, str]  # published name -> key in module.state_dict()
    layers_used: int

    @property
    def truncated(self) -> bool:
        return self.layers_used < self.source.fingerprint.num_layers


def plan_swap(module: nn.Module, source: EncoderSource, label: str) -> SwapPlan:
    """Check that `source` fits `module` (architecture, tensor names, shapes) and say what to copy."""
    kind = encoder_kind(module)
    if kind is None:
        raise UnsupportedModelError(f"{label} is a {type(module).__name__}, not a transformers CLIP text/vision model.")
    target = EncoderFingerprint.from_config(module.config)
    projection = has_projection(module, kind)
    problems = source.fingerprint.mismatches(target, target_has_projection=projection)
    if problems:
        fitting = fitting_checkpoint_names(target, has_projection=projection)
        hint = (
            f"Registered checkpoints that fit it: {', '.join(fitting)}."
            if fitting
            else ("No registered Safe-CLIP checkpoint fits it.")
        )
        raise ArchitectureMismatchError(
            f"{source.label} provides a {source.fingerprint.describe()} encoder, but {label} is a "
            f"{target.describe()} encoder ({'; '.join(problems)}). {hint}"
        )
    state = module.state_dict(keep_vars=True)
    names = module_names(state.keys(), kind)
    missing = sorted(name for name in names if name not in source.shapes)
    if missing:
        raise CorruptCheckpointError(
            f"{source.label} lacks {len(missing)} tensor(s) that {label} needs, e.g. {missing[:3]}."
        )
    wrong = [
        f"{name}: {tuple(source.shapes[name])} vs {tuple(state[key].shape)}"
        for name, key in names.items()
        if tuple(source.shapes[name]) != tuple(state[key].shape)
    ]
    if wrong:
        raise ArchitectureMismatchError(f"{source.label} does not fit {label}: shapes differ for {wrong[:3]}.")
    quantized = [key for key in names.values() if not (state[key].is_floating_point() or state[key].is_complex())]
    if quantized:
        raise UnsupportedModelError(
            f"{label} holds quantized weights ({quantized[0]}: {state[quantized[0]].dtype}); Safe-CLIP weights "
            "cannot be copied into them. Keep the encoder unquantized, e.g. for bitsandbytes pass "
            "BitsAndBytesConfig(..., llm_int8_skip_modules=['vision_tower', 'multi_modal_projector'])."
        )
    return SwapPlan(label=label, module=module, source=source, names=names, layers_used=target.num_layers)


def apply_swap(plan: SwapPlan, tensors: dict[str, torch.Tensor], *, torch_dtype: torch.dtype | None = None) -> None:
    """Copy `tensors` (read from `plan.source`) into `plan.module` and record the swap."""
    module = plan.module
    if torch_dtype is not None:
        cast_encoder(module, torch_dtype, plan.label)
    with torch.no_grad():
        for name, key in plan.names.items():
            _writable_tensor(module, key, plan.label).copy_(tensors[name])
    record = {
        "checkpoint": plan.source.label,
        "identity": plan.source.identity,
        "digest": plan.source.digest,
        "base_model": plan.source.base_model,
        "layers": f"{plan.layers_used}/{plan.source.fingerprint.num_layers}",
    }
    setattr(module.config, RECORD_KEY, record)
    logger.info(
        "safe_encoders: %s <- %s (%s%s) [%s, %s]",
        plan.label,
        plan.source.label,
        plan.source.fingerprint.describe(),
        f", first {plan.layers_used} layers" if plan.truncated else "",
        _module_dtype(module),
        _module_device(module),
    )


def cast_encoder(module: nn.Module, torch_dtype: torch.dtype, label: str) -> None:
    """Convert `module` to `torch_dtype` unless accelerate offloads it (then it cannot be changed in place)."""
    if _module_dtype(module) == torch_dtype:
        return
    if _is_offloaded(module):
        raise UnsupportedModelError(
            f"{label} is offloaded by accelerate; torch_dtype cannot change it in place. "
            "Load the pipeline in the dtype you want, or pass torch_dtype=None."
        )
    module.to(torch_dtype)


def installed_record(module: Any) -> dict[str, Any] | None:
    """The record of the Safe-CLIP swap into `module`, or None if none happened."""
    record = getattr(getattr(module, "config", None), RECORD_KEY, None)
    return record if isinstance(record, dict) else None


def _writable_tensor(module: nn.Module, key: str, label: str) -> torch.Tensor:
    owner_name, _, local = key.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    tensor = owner._parameters.get(local)
    if tensor is None:
        tensor = owner._buffers[local]
    if tensor.device.type != "meta":
        return tensor
    hook = getattr(owner, "_hf_hook", None)
    for candidate in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
        weights_map = getattr(candidate, "weights_map", None)
        if getattr(candidate, "offload", False) and weights_map is not None:
            value = weights_map[local]
            if isinstance(value, torch.Tensor) and value.device.type != "meta":
                return value
    raise UnsupportedModelError(
        f"{label}.{key} has no materialised weights (meta device, offloaded to disk or not loaded). "
        "Load the model without disk offload before calling make_safe."
    )


def _is_offloaded(module: nn.Module) -> bool:
    return any(p.device.type == "meta" for p in module.parameters())


def _module_dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def _module_device(module: nn.Module) -> str:
    hook = getattr(module, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    return str(device) if device is not None else str(next(module.parameters()).device)
