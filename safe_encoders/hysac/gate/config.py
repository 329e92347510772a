"""`SafetyGate`: what the gate checks and what it does about it, validated when it is made."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Literal

from ..model import HySAC

PromptPolicy = Literal["block", "redirect", "flag", "off"]
ImagePolicy = Literal["blur", "black", "flag", "block", "off"]
PROMPT_POLICIES = ("block", "redirect", "flag", "off")
IMAGE_POLICIES = ("blur", "black", "flag", "block", "off")
ON_BLOCK = ("raise", "blank")
# Under these prompt policies a call runs only when every input that conditions generation was checked.
STRICT_POLICIES = ("block", "redirect")
# transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD: LLaVA's image processors use them.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Inputs the gate reads and checks itself: naming them in allow_unchecked would mean nothing.
CHECKED_INPUTS = ("prompt", "prompt_2", "prompt_3")


@dataclass(frozen=True, eq=False)
class SafetyGate:
    """What the gate checks and what it does about it (see `safe_encoders.hysac.gate` for the whole story).

    Attributes:
        classifier: a `HySAC` model, or a source for `HySAC.from_pretrained` (loaded when the gate is added).
        prompt_policy: "block", "redirect", "flag" or "off" (diffusers pipelines). Under "block" and
            "redirect" a call runs only when every input that conditions generation was checked.
        image_policy: "blur", "black", "flag", "block" or "off": generated images, input images
            (`image`, `ip_adapter_image`) and LLaVA input images.
        on_block: for prompt_policy="block": "raise" `UnsafeContentError`, or "blank": black images for
            the unsafe prompts (the rest of the batch is generated normally).
        text_threshold, image_threshold: root-distance thresholds (finite numbers); None takes them
            from the classifier's bounds (95th percentile of safe distances).
        redirect_checkpoint: Safe-CLIP checkpoint ("auto", registry name, Hub id, folder or file) for
            prompt_policy="redirect" when the pipeline's text encoder is not already safe.
        replace_safety_checker: remove diffusers' safety_checker while the gate is on (it runs beside
            the gate otherwise).
        blur_sigma: Gaussian blur sigma as a fraction of the image's shorter side, in (0, 1].
        input_mean, input_std: the normalisation of the pixel values a LLaVA tower receives (default
            OpenAI CLIP's, which LLaVA's image processors use); three finite numbers, std > 0.
        allow_unchecked: names of inputs the gate cannot check that a call may still use under a strict
            policy, e.g. `("prompt_embeds", "pooled_prompt_embeds")`, `"ip_adapter_image_embeds"`,
            `"callback_on_step_end"`, `"output_latents"`, `"unreadable_tokens"` (tokens the classifier
            cannot read, e.g. textual inversion), `"inputs_embeds"` (an encoder called without token ids;
            LLaVA's too) / `"mm_encoder_outputs"` (LLaVA), a pipeline argument with no role, or an image
            input ("image", "ip_adapter_image") while image_policy="off". Each use is recorded in the report.
    """

    classifier: HySAC | str | os.PathLike
    prompt_policy: PromptPolicy = "block"
    image_policy: ImagePolicy = "blur"
    on_block: Literal["raise", "blank"] = "raise"
    text_threshold: float | None = None
    image_threshold: float | None = None
    redirect_checkpoint: str | None = None
    replace_safety_checker: bool = False
    blur_sigma: float = 0.05
    input_mean: tuple[float, float, float] = CLIP_MEAN
    input_std: tuple[float, float, float] = CLIP_STD
    allow_unchecked: tuple[str, ...] = ()
    version: int = 1

    def __post_init__(self) -> None:
        for name, allowed in (
            ("prompt_policy", PROMPT_POLICIES),
            ("image_policy", IMAGE_POLICIES),
            ("on_block", ON_BLOCK),
        ):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in allowed:
                raise ValueError(f"SafetyGate: {name} must be one of {', '.join(allowed)}; got {value!r}.")
        if not isinstance(self.classifier, HySAC | str | os.PathLike):
            raise TypeError(
                f"SafetyGate: classifier must be a HySAC model or a checkpoint name/path, "
                f"not {type(self.classifier).__name__}."
            )
        for name in ("text_threshold", "image_threshold"):
            if getattr(self, name) is not None:
                finite_number(getattr(self, name), f"SafetyGate: {name}")
        sigma = finite_number(self.blur_sigma, "SafetyGate: blur_sigma")
        if not 0 < sigma <= 1:
            raise ValueError(f"SafetyGate: blur_sigma is a fraction of the shorter side, in (0, 1]; got {sigma}.")
        for name, positive in (("input_mean", False), ("input_std", True)):
            values = getattr(self, name)
            if not isinstance(values, tuple | list) or len(values) != 3:
                raise ValueError(f"SafetyGate: {name} must be three numbers (R, G, B); got {values!r}.")
            for i, value in enumerate(values):
                number = finite_number(value, f"SafetyGate: {name}[{i}]")
                if positive and number <= 0:
                    raise ValueError(f"SafetyGate: {name}[{i}] must be > 0 (pixels are divided by it); got {number}.")
        for name in ("replace_safety_checker",):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"SafetyGate: {name} must be True or False; got {getattr(self, name)!r}.")
        allow = (self.allow_unchecked,) if isinstance(self.allow_unchecked, str) else tuple(self.allow_unchecked)
        for name in allow:
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"SafetyGate: allow_unchecked holds input names (e.g. 'prompt_embeds'); got {name!r}.")
            if name in CHECKED_INPUTS:
                raise ValueError(f"SafetyGate: {name!r} is always checked; it cannot be allowed unchecked.")
        object.__setattr__(self, "allow_unchecked", allow)

    @property
    def strict(self) -> bool:
        """Whether a call must have every generation-conditioning input checked (block / redirect)."""
        return self.prompt_policy in STRICT_POLICIES


def finite_number(value: Any, what: str) -> float:
    """`value` as a float when it is a finite real number (not a bool, not a string); else a clear error."""
    if isinstance(value, bool) or (not isinstance(value, int | float) and not _is_real_scalar(value)):
        raise TypeError(f"{what} must be a finite number; got {value!r} ({type(value).__name__}).")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{what} must be a finite number; got {number}.")
    return number


def _is_real_scalar(value: Any) -> bool:
    """numpy / torch 0-d real numbers."""
    is_floating = getattr(value, "is_floating_point", None)
    if callable(is_floating):  # torch
        return value.numel() == 1 and not value.is_complex() and value.dtype != _torch_bool()
    kind = getattr(getattr(value, "dtype", None), "kind", None)  # numpy
    return kind in ("f", "i", "u") and getattr(value, "size", 0) == 1


def _torch_bool() -> Any:
    import torch

    return torch.bool
