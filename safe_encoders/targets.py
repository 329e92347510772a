"""Encoders inside wrappers: which ones make_safe sees through, and which it refuses (with what to do).

`torch.compile` keeps the real module as `_orig_mod` and shares its parameters: swapping those is
swapping the compiled encoder. LoRA layers injected by peft (`pipe.load_lora_weights`) and quantized
layers change what the forward computes from the weights, so copying Safe-CLIP weights into them
would not give Safe-CLIP's output: those targets are refused before anything is written. Each
refusal is a `WrapperCheck` in `WRAPPER_CHECKS`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from .errors import UnsupportedModelError


def unwrap(module: Any) -> Any:
    """The module a `torch.compile`d one wraps (its parameters are the compiled module's), else `module`."""
    while isinstance(module, nn.Module) and isinstance(getattr(module, "_orig_mod", None), nn.Module):
        module = module._orig_mod
    return module


@dataclass(frozen=True)
class WrapperCheck:
    """`reason(module, label)` says why `module` cannot be swapped (and what to do), or returns None."""

    name: str
    reason: Callable[[nn.Module, str], str | None]


def refuse_wrapped(module: nn.Module, label: str) -> None:
    """UnsupportedModelError if a `WRAPPER_CHECKS` entry refuses `module` (an unwrapped encoder)."""
    for check in WRAPPER_CHECKS:
        reason = check.reason(module, label)
        if reason:
            raise UnsupportedModelError(reason)


def _lora(module: nn.Module, label: str) -> str | None:
    injected = [name for name, sub in module.named_modules() if _is_tuner_layer(sub)]
    if not injected:
        return None
    return (
        f"{label} has LoRA adapter layers injected (e.g. {injected[0]}, {len(injected)} in all), as "
        "pipe.load_lora_weights does; the adapters were trained on the original encoder and would be applied on "
        "top of Safe-CLIP. Nothing was changed. Remove them first (pipe.unload_lora_weights(), or "
        "peft's unload() on the encoder), then call make_safe."
    )


def _is_tuner_layer(module: nn.Module) -> bool:
    tuners = sys.modules.get("peft.tuners.tuners_utils")  # never imported: no peft layer can exist
    if tuners is None:
        return hasattr(module, "base_layer") and hasattr(module, "lora_A")
    return isinstance(module, tuners.BaseTunerLayer)


# Libraries whose layers hold quantized weights, by the module their classes live in.
_QUANTIZING_PACKAGES = {
    "torch.ao.nn.quantized": "torch dynamic/static quantization (torch.ao.quantization)",
    "torch.nn.quantized": "torch dynamic/static quantization (torch.ao.quantization)",
    "torch.ao.nn.intrinsic.quantized": "torch quantization (torch.ao.quantization)",
    "bitsandbytes": "bitsandbytes",
    "optimum.quanto": "optimum-quanto",
    "torchao": "torchao",
    "hqq": "HQQ",
    "awq": "AWQ",
    "auto_gptq": "GPTQ",
    "gptqmodel": "GPTQ",
}


def _quantized(module: nn.Module, label: str) -> str | None:
    method = getattr(getattr(module, "config", None), "quantization_config", None)
    what = None
    if method is not None:
        name = method.get("quant_method") if isinstance(method, dict) else getattr(method, "quant_method", None)
        what = f"{getattr(name, 'value', name) or type(method).__name__} (config.quantization_config)"
    for name, sub in module.named_modules():
        cls = type(sub)
        origins = [cls.__module__, *(type(p).__module__ for p in sub._parameters.values() if p is not None)]
        for package, description in _QUANTIZING_PACKAGES.items():
            if what is None and any(o == package or o.startswith(package + ".") for o in origins):
                what = f"{description}: {name or 'the encoder'} is a {cls.__module__}.{cls.__name__}"
    if what is None:
        state = module.state_dict(keep_vars=True)
        odd = [k for k, v in state.items() if not k.endswith("position_ids") and not v.is_floating_point()]
        if odd:
            what = f"quantized weights ({odd[0]}: {state[odd[0]].dtype})"
    if what is None:
        return None
    return (
        f"{label} is quantized with {what}; Safe-CLIP weights cannot be copied into quantized layers. Nothing was "
        "changed. Keep the encoder unquantized (e.g. for bitsandbytes pass BitsAndBytesConfig(..., "
        "llm_int8_skip_modules=['vision_tower', 'multi_modal_projector']) or leave the text encoder out of the "
        "quantization), or call make_safe on the floating-point model and quantize it afterwards."
    )


WRAPPER_CHECKS: list[WrapperCheck] = [
    WrapperCheck("LoRA adapters injected by peft", _lora),
    WrapperCheck("quantized layers", _quantized),
]
