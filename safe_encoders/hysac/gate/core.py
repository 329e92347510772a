"""A HySAC safety gate for diffusers text-to-image pipelines and LLaVA models.

`add_safety_gate(target, SafetyGate(classifier=hysac, ...))` returns a `GateHandle`; `handle.remove()`
(or `remove_safety_gate(target)`) undoes everything it did.

diffusers pipelines (any `DiffusionPipeline` whose `__call__` takes `prompt`): the pipeline object
gets a subclass of its own class (same name, same `__call__` signature) whose `__call__`

1. scores the prompt(s) with HySAC's text side and applies `prompt_policy`:
   - "block": raise `UnsafeContentError` (`on_block="raise"`), or (`on_block="blank"`) generate
     nothing for the unsafe prompts: they are replaced by "" and their images blacked out;
   - "redirect": generate unsafe prompts through Safe-CLIP text encoder(s): the pipeline's own when
     `is_safe(pipe)`, else a copy of each text encoder made safe with `make_safe(copy,
     redirect_checkpoint)` when the gate is added, swapped in for a call that has an unsafe prompt
     (the whole call: in a batch mixing safe and unsafe prompts the safe ones go through Safe-CLIP
     too, which was trained to keep them where they were; calls with only safe prompts keep the
     original encoder; the pipeline is never changed for good);
   - "flag": only report; "off": no check.
   A call with `prompt_embeds` and no `prompt` cannot be checked; the report says "unchecked".
2. runs the pipeline, then scores the images (unless `output_type="latent"`) and applies
   `image_policy`: "blur", "black", "flag", "block" (raise) or "off". Flags are OR-ed into the
   output's `nsfw_content_detected` when the pipeline has that field. diffusers' own
   `safety_checker` keeps running beside the gate unless `replace_safety_checker=True`, which
   removes it while the gate is on.

LLaVA models: a forward pre-hook on each CLIP vision tower scores the images the tower is about to
see (for LLaVA-Next: every tile) and applies `image_policy` to them before the model answers:
"block" raises, "black" / "blur" change what the model sees, "flag" only reports.

The last call's verdicts are in `handle.last_report`.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import logging
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UnsafeContentError, UnsupportedModelError
from .classify import Verdicts, embed_texts, score_embeddings
from .model import HySAC

logger = logging.getLogger("safe_encoders")

PromptPolicy = Literal["block", "redirect", "flag", "off"]
ImagePolicy = Literal["blur", "black", "flag", "block", "off"]
_PROMPT_POLICIES = ("block", "redirect", "flag", "off")
_IMAGE_POLICIES = ("blur", "black", "flag", "block", "off")
_ON_BLOCK = ("raise", "blank")
GATE_ATTRIBUTE = "_safe_encoders_gate"
# transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD: LLaVA's image processors use them.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True, eq=False)
class SafetyGate:
    """What the gate checks and what it does about it.

    Attributes:
        classifier: a `HySAC` model, or a source for `HySAC.from_pretrained` (loaded when the gate is added).
        prompt_policy: "block", "redirect", "flag" or "off" (diffusers pipelines).
        image_policy: "blur", "black", "flag", "block" or "off" (generated images; LLaVA input images).
        on_block: for prompt_policy="block": "raise" `UnsafeContentError`, or "blank": black images for
            the unsafe prompts (the rest of the batch is generated normally).
        text_threshold, image_threshold: root-distance thresholds; None takes them from the
            classifier's bounds (95th percentile of safe distances).
        redirect_checkpoint: Safe-CLIP checkpoint ("auto", registry name, Hub id, folder or file) for
            prompt_policy="redirect" when the pipeline's text encoder is not already safe.
        replace_safety_checker: remove diffusers' safety_checker while the gate is on (it runs beside
            the gate otherwise).
        blur_sigma: Gaussian blur sigma as a fraction of the image's shorter side.
        input_mean, input_std: the normalisation of the pixel values a LLaVA tower receives (default
            OpenAI CLIP's, which LLaVA's image processors use).
    """

    classifier: HySAC | str
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
    version: int = 1

    def __post_init__(self) -> None:
        for name, allowed in (
            ("prompt_policy", _PROMPT_POLICIES),
            ("image_policy", _IMAGE_POLICIES),
            ("on_block", _ON_BLOCK),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"SafetyGate: {name} must be one of {', '.join(allowed)}; got {value!r}.")
        if not isinstance(self.classifier, HySAC | str):
            raise TypeError(
                f"SafetyGate: classifier must be a HySAC model or a checkpoint name/path, "
                f"not {type(self.classifier).__name__}."
            )
        if self.blur_sigma <= 0:
            raise ValueError(f"SafetyGate: blur_sigma must be > 0, got {self.blur_sigma}.")


@dataclass
class GateReport:
    """What the gate saw and did in the last call.

    `prompt_action` / `image_action`: "passed" (nothing unsafe), "blocked", "blanked", "redirected",
    "flagged", "blurred", "blacked out", "unchecked" (no prompt text / latent output) or "off".
    """

    prompts: Verdicts | None = None
    prompt_action: str = "off"
    images: Verdicts | None = None
    image_action: str = "off"


@dataclass(eq=False)
class GateHandle:
    """A gate installed on a target; `remove()` undoes it."""

    target: Any
    gate: SafetyGate
    classifier: HySAC
    kind: Literal["diffusers", "llava"]
    text_threshold: float | None
    image_threshold: float | None
    last_report: GateReport | None = None
    calls: int = 0
    _undo: list[Any] = field(default_factory=list, repr=False)
    _redirect: dict[str, nn.Module] = field(default_factory=dict, repr=False)

    @property
    def active(self) -> bool:
        return getattr(self.target, GATE_ATTRIBUTE, None) is self

    def remove(self) -> None:
        """Undo the gate (idempotent)."""
        if not self.active:
            return
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
        self._redirect.clear()
        with contextlib.suppress(AttributeError):
            object.__delattr__(self.target, GATE_ATTRIBUTE)


def add_safety_gate(target: Any, gate: SafetyGate) -> GateHandle:
    """Install `gate` on a diffusers text-to-image pipeline or a LLaVA model; returns the handle.

    Everything (classifier, thresholds, redirect encoders) is prepared and checked before the target
    is touched. A target holds one gate at a time. Works before or after `make_safe`.
    """
    if getattr(target, GATE_ATTRIBUTE, None) is not None:
        raise ValueError(
            f"add_safety_gate: this {type(target).__name__} already has a safety gate; remove it first "
            "(handle.remove() or remove_safety_gate(target))."
        )
    for kind, matches, install in _TARGETS:
        if matches(target):
            classifier = (
                gate.classifier if isinstance(gate.classifier, HySAC) else HySAC.from_pretrained(gate.classifier)
            )
            handle = GateHandle(
                target=target,
                gate=gate,
                classifier=classifier.eval(),
                kind=kind,
                text_threshold=_threshold(classifier, "text", gate.text_threshold, needed=kind == "diffusers"
                                          and gate.prompt_policy != "off"),
                image_threshold=_threshold(classifier, "image", gate.image_threshold,
                                           needed=gate.image_policy != "off"),
            )  # fmt: skip
            install(handle)
            object.__setattr__(target, GATE_ATTRIBUTE, handle)
            return handle
    raise UnsupportedModelError(
        f"add_safety_gate does not know how to gate a {type(target).__module__}.{type(target).__name__}. "
        "Supported: diffusers text-to-image pipelines (a __call__ with a prompt argument); LLaVA models with a "
        "CLIP vision tower."
    )


def remove_safety_gate(target: Any) -> bool:
    """Remove the gate of `target`; False if it had none."""
    handle = getattr(target, GATE_ATTRIBUTE, None)
    if handle is None:
        return False
    handle.remove()
    return True


def _threshold(
    classifier: HySAC, modality: Literal["text", "image"], given: float | None, *, needed: bool
) -> float | None:
    if given is not None:
        return float(given)
    if not needed:
        return None
    if classifier.bounds is None or not classifier.bounds.has_threshold(modality):
        raise ValueError(
            f"SafetyGate: no {modality}_threshold given and the classifier's bounds have none for {modality}. "
            f"Pass {modality}_threshold=... (see calibrate_threshold) or use a classifier with bounds."
        )
    return classifier.bounds.threshold(modality)


# ------------------------------------------------------------------------------ diffusers


def _is_text_to_image_pipeline(obj: Any) -> bool:
    from ..diffusers.pipelines import is_diffusers_pipeline

    return is_diffusers_pipeline(obj) and "prompt" in inspect.signature(type(obj).__call__).parameters


def _install_on_pipeline(handle: GateHandle) -> None:
    pipe, gate = handle.target, handle.gate
    if gate.prompt_policy != "off" and handle.classifier.tokenizer is None:
        raise ValueError("SafetyGate: the classifier has no tokenizer; set classifier.tokenizer to check prompts.")
    if gate.prompt_policy == "redirect":  # after the cheap checks: this copies encoders and may download
        handle._redirect = _redirect_encoders(pipe, gate)
    # All checks done: change the pipeline.
    base = type(pipe)
    pipe.__class__ = _gated_class(base)
    handle._undo.append(lambda: setattr(pipe, "__class__", base))
    if gate.replace_safety_checker and getattr(pipe, "safety_checker", None) is not None:
        checker = pipe.safety_checker
        pipe.safety_checker = None
        handle._undo.append(lambda: setattr(pipe, "safety_checker", checker))


def _redirect_encoders(pipe: Any, gate: SafetyGate) -> dict[str, nn.Module]:
    """Safe-CLIP copies of the text encoders that are not safe yet (empty when `is_safe(pipe)`)."""
    from ..diffusers.pipelines import pipeline_slots
    from ..dispatch import make_safe
    from ..swap import installed_record

    slots = pipeline_slots(pipe)
    todo = [slot for slot in slots if installed_record(slot.module) is None]
    if not todo:
        return {}
    blocked = [f"{slot.label} ({slot.why_not})" for slot in todo if slot.kind is None]
    if blocked:
        raise UnsupportedModelError(
            f"SafetyGate(prompt_policy='redirect'): no Safe-CLIP exists for {'; '.join(blocked)}, so unsafe "
            "prompts cannot be redirected. Use prompt_policy='block' for this pipeline."
        )
    if gate.redirect_checkpoint is None:
        raise ValueError(
            "SafetyGate(prompt_policy='redirect') needs a Safe-CLIP text encoder: the pipeline is not safe "
            "(is_safe(pipe) is False). Call make_safe(pipe) first, or pass redirect_checkpoint='auto' (or a "
            "checkpoint name / path) to redirect only unsafe prompts through a Safe-CLIP copy."
        )
    encoders = {}
    for slot in todo:
        encoders[slot.label.removeprefix("pipe.")] = make_safe(copy.deepcopy(slot.module), gate.redirect_checkpoint)
    return encoders


@functools.cache
def _gated_class(base: type) -> type:
    original = base.__call__

    @functools.wraps(original)
    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        handle = getattr(self, GATE_ATTRIBUTE, None)
        if handle is None or not handle.active:
            return original(self, *args, **kwargs)
        return _gated_pipeline_call(handle, original, self, args, kwargs)

    # Same name and module: diffusers records `__class__.__name__` when saving the pipeline.
    return type(base.__name__, (base,), {"__call__": __call__, "__module__": base.__module__,
                                         "__qualname__": base.__qualname__, "_safe_encoders_gated": True})  # fmt: skip


def _gated_pipeline_call(handle: GateHandle, original: Any, pipe: Any, args: tuple, kwargs: dict) -> Any:
    gate, report = handle.gate, GateReport()
    handle.last_report, handle.calls = report, handle.calls + 1
    bound = inspect.signature(original).bind(pipe, *args, **kwargs)
    prompt = bound.arguments.get("prompt")
    blank_prompts: list[int] = []
    swap: dict[str, nn.Module] = {}
    if gate.prompt_policy != "off":
        if prompt is None:
            report.prompt_action = "unchecked"
            logger.warning("safety gate: the call has no prompt text (prompt_embeds?); the prompt was not checked.")
        else:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            embeddings = embed_texts(handle.classifier, prompts)
            verdicts = score_embeddings(embeddings, handle.classifier.curvature.detach(), handle.text_threshold)
            report.prompts = verdicts
            unsafe = [i for i, flag in enumerate(verdicts.unsafe.tolist()) if flag]
            report.prompt_action = "passed" if not unsafe else _prompt_action(gate)
            if unsafe and gate.prompt_policy == "block":
                if gate.on_block == "raise":
                    raise UnsafeContentError(
                        f"safety gate: prompt(s) {unsafe} are unsafe (root distance "
                        f"{[round(verdicts.scores[i].item(), 4) for i in unsafe]} > threshold "
                        f"{verdicts.threshold:.4f}); generation was blocked. Use prompt_policy='redirect' or "
                        "'flag' to generate anyway.",
                        report,
                    )
                blank_prompts = unsafe
                bound.arguments["prompt"] = (
                    "" if isinstance(prompt, str) else ["" if i in unsafe else p for i, p in enumerate(prompts)]
                )
            elif unsafe and gate.prompt_policy == "redirect":
                swap = handle._redirect
    with _swapped_components(pipe, swap):
        output = original(*bound.args, **bound.kwargs)
    per_prompt = int(bound.arguments.get("num_images_per_prompt") or 1)
    blank = [i * per_prompt + j for i in blank_prompts for j in range(per_prompt)]
    return _check_output(handle, report, output, blank, bound.arguments.get("output_type", "pil"))


def _prompt_action(gate: SafetyGate) -> str:
    if gate.prompt_policy == "block":
        return "blocked" if gate.on_block == "raise" else "blanked"
    return {"redirect": "redirected", "flag": "flagged"}[gate.prompt_policy]


@contextlib.contextmanager
def _swapped_components(pipe: Any, components: dict[str, nn.Module]) -> Iterator[None]:
    saved = {name: getattr(pipe, name) for name in components}
    try:
        for name, module in components.items():
            setattr(pipe, name, module)
        yield
    finally:
        for name, module in saved.items():
            setattr(pipe, name, module)


def _check_output(handle: GateHandle, report: GateReport, output: Any, blank: list[int], output_type: str) -> Any:
    gate = handle.gate
    as_tuple = isinstance(output, tuple)
    images = output[0] if as_tuple else output.images
    if output_type == "latent" or images is None:
        report.image_action = "unchecked" if gate.image_policy != "off" else "off"
        if blank:
            images = _replace_rows(images, torch.zeros_like(_as_tensor(images)[0]), blank, images)
        return _rebuild(output, images, None, as_tuple)
    pixels, layout = _images_to_tensor(images)
    flags = torch.zeros(pixels.shape[0], dtype=torch.bool)
    if gate.image_policy != "off":
        flags = _apply_image_policy(handle, report, pixels, "generated", "the output was withheld").clone()
    if blank:
        pixels[blank] = 0
        flags[blank] = True
    changed = gate.image_policy in ("blur", "black") or bool(blank)
    new_images = _tensor_to_images(pixels, layout, images) if changed else images
    return _rebuild(output, new_images, flags.tolist(), as_tuple)


_IMAGE_ACTIONS = {"blur": "blurred", "black": "blacked out", "flag": "flagged", "block": "blocked"}


def _apply_image_policy(
    handle: GateHandle, report: GateReport, pixels: torch.Tensor, what: str, consequence: str
) -> torch.Tensor:
    """Score images (``pixels`` in [0, 1]) and apply the gate's image policy to the unsafe ones, in place.

    Records the verdicts and the action in ``report``, raises ``UnsafeContentError`` under ``block``;
    returns the unsafe flags.
    """
    gate = handle.gate
    embeddings = _embed_pixels(handle.classifier, pixels)
    verdicts = score_embeddings(embeddings, handle.classifier.curvature.detach(), handle.image_threshold)
    report.images = verdicts
    flags = verdicts.unsafe
    if not flags.any():
        report.image_action = "passed"
        return flags
    report.image_action = _IMAGE_ACTIONS[gate.image_policy]
    if gate.image_policy == "block":
        raise UnsafeContentError(
            f"safety gate: {what} image(s) {flags.nonzero().flatten().tolist()} are unsafe (threshold "
            f"{verdicts.threshold:.4f}); {consequence}.",
            report,
        )
    if gate.image_policy == "blur":
        pixels[flags] = gaussian_blur(pixels[flags], gate.blur_sigma)
    elif gate.image_policy == "black":
        pixels[flags] = 0
    return flags


def _rebuild(output: Any, images: Any, flags: list[bool] | None, as_tuple: bool) -> Any:
    if as_tuple:
        rest = list(output[1:])
        if flags is not None and rest and (rest[0] is None or isinstance(rest[0], list)):
            rest[0] = _merge_flags(rest[0], flags)
        return (images, *rest)
    output.images = images
    if flags is not None and hasattr(output, "nsfw_content_detected"):
        output.nsfw_content_detected = _merge_flags(output.nsfw_content_detected, flags)
    return output


def _merge_flags(existing: list[bool] | None, flags: list[bool]) -> list[bool]:
    if existing is None:
        return list(flags)
    return [bool(a) or bool(b) for a, b in zip(existing, flags, strict=True)]


def _images_to_tensor(images: Any) -> tuple[torch.Tensor, str]:
    """(float tensor (B, 3, H, W) in [0, 1] on CPU, layout tag) from PIL list / numpy (B,H,W,C) / torch (B,C,H,W)."""
    import numpy as np

    if isinstance(images, torch.Tensor):
        return images.detach().float().cpu().clone(), "pt"
    if isinstance(images, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(images)).float().permute(0, 3, 1, 2).clone(), "np"
    if isinstance(images, list) and images and hasattr(images[0], "convert"):
        arrays = [np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0 for image in images]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).clone(), "pil"
    raise UnsupportedModelError(f"safety gate: cannot read pipeline images of type {type(images).__name__}.")


def _tensor_to_images(pixels: torch.Tensor, layout: str, like: Any) -> Any:
    import numpy as np
    from PIL import Image

    if layout == "pt":
        return pixels.to(device=like.device, dtype=like.dtype)
    if layout == "np":
        return pixels.permute(0, 2, 3, 1).numpy().astype(like.dtype)
    arrays = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(np.ascontiguousarray(array)) for array in arrays]


def _as_tensor(images: Any) -> torch.Tensor:
    return images if isinstance(images, torch.Tensor) else torch.as_tensor(images)


def _replace_rows(images: Any, value: torch.Tensor, rows: list[int], like: Any) -> Any:
    tensor = _as_tensor(images).clone()
    tensor[rows] = value
    return tensor if isinstance(like, torch.Tensor) else tensor.numpy()


def _embed_pixels(classifier: HySAC, pixels: torch.Tensor) -> torch.Tensor:
    """Encode images in [0, 1] (B, 3, H, W) with the classifier's image processor (or a CLIP-style resize)."""
    processor = classifier.image_processor
    with torch.no_grad():
        if processor is not None:
            arrays = list(pixels.permute(0, 2, 3, 1).numpy())
            values = processor(images=arrays, do_rescale=False, return_tensors="pt")["pixel_values"]
        else:
            size = int(getattr(getattr(classifier.vision, "config", None), "image_size", 224))
            values = clip_pixel_values(pixels, size)
        return classifier.encode_image(values.to(classifier.device))


def clip_pixel_values(
    images: torch.Tensor, size: int, mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD
) -> torch.Tensor:
    """CLIP preprocessing of float images in [0, 1] (B, 3, H, W).

    Shorter side to `size` (bicubic), centre crop, normalise with `mean` / `std`.
    """
    height, width = images.shape[-2:]
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    resized = F.interpolate(images, size=(new_h, new_w), mode="bicubic", align_corners=False).clamp(0, 1)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    cropped = resized[..., top : top + size, left : left + size]
    return (cropped - _channel(mean, cropped)) / _channel(std, cropped)


def gaussian_blur(images: torch.Tensor, sigma_fraction: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) images; sigma = `sigma_fraction` x the shorter side (in pixels)."""
    if images.numel() == 0:
        return images
    height, width = images.shape[-2:]
    sigma = max(sigma_fraction * min(height, width), 0.5)
    radius = min(math.ceil(3 * sigma), height - 1, width - 1)
    if radius < 1:
        return images
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    horizontal = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    vertical = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    blurred = F.conv2d(padded, horizontal, groups=channels)
    return F.conv2d(blurred, vertical, groups=channels)


def _channel(values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)


# ---------------------------------------------------------------------------------- LLaVA


def _is_llava(obj: Any) -> bool:
    from ..llava.models import is_llava_model

    return is_llava_model(obj)


def _install_on_llava(handle: GateHandle) -> None:
    from ..llava.models import vision_tower_slots

    model, gate = handle.target, handle.gate
    towers = [slot for slot in vision_tower_slots(model) if slot.kind == "vision"]
    if not towers:
        raise UnsupportedModelError(f"add_safety_gate: found no CLIP vision tower in {type(model).__name__}.")
    if gate.prompt_policy not in ("off", "block") or gate.on_block != "raise":
        warnings.warn(
            "add_safety_gate: prompt_policy / on_block apply to diffusers pipelines; a LLaVA gate checks images.",
            UserWarning,
            stacklevel=3,
        )
    for slot in towers:
        hook = slot.module.register_forward_pre_hook(functools.partial(_llava_hook, handle), with_kwargs=True)
        handle._undo.append(hook.remove)


def _llava_hook(handle: GateHandle, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    gate = handle.gate
    report = GateReport(image_action="off")
    handle.last_report, handle.calls = report, handle.calls + 1
    if gate.image_policy == "off":
        return None
    positional = bool(args)
    pixel_values = args[0] if positional else kwargs.get("pixel_values")
    if pixel_values is None:
        report.image_action = "unchecked"
        return None
    pixels = pixel_values.detach().float().cpu()
    images = (pixels * _channel(gate.input_std, pixels)) + _channel(gate.input_mean, pixels)
    images = images.clamp(0, 1)
    flags = _apply_image_policy(handle, report, images, "input", "the model was not run")
    if not flags.any() or gate.image_policy == "flag":
        return None
    normalised = (images - _channel(gate.input_mean, images)) / _channel(gate.input_std, images)
    new_values = normalised.to(device=pixel_values.device, dtype=pixel_values.dtype)
    if positional:
        return (new_values, *args[1:]), kwargs
    return args, {**kwargs, "pixel_values": new_values}


_TARGETS = (
    ("diffusers", _is_text_to_image_pipeline, _install_on_pipeline),
    ("llava", _is_llava, _install_on_llava),
)
