"""The gate on a diffusers pipeline: a subclass whose `__call__` checks every input, then the output.

Each argument of a call has a role, decided by the first rule of `INPUT_ROLES` that matches its
name (behaviour as data: a new pipeline argument is one more rule):

- "text" (`prompt`, `prompt_2`, `prompt_3`): scored with HySAC's text side, `prompt_policy` applied;
- "image" (`image`, `ip_adapter_image`, `control_image`): scored with HySAC's image side,
  `image_policy` applied to what the pipeline will see ("blur" / "black" change it, "block" raises);
- "embeddings" (`prompt_embeds`, `pooled_prompt_embeds`, `ip_adapter_image_embeds`, any other
  `*_embeds` / `*_latents`): the gate cannot read them;
- "callback" (`callback_on_step_end`): may replace `prompt_embeds` mid-call; wrapped so that it may
  change only the latents;
- "not a target" (`negative_*`, `mask_image`, `latents`): they do not steer the image toward their
  content; listed in the report, not scored.

Under a strict prompt policy ("block", "redirect") an input the gate cannot check refuses the call
unless `SafetyGate.allow_unchecked` names it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
from collections.abc import Callable, Iterator
from dataclasses import fields, is_dataclass
from typing import Any

import torch
from torch import nn

from ...errors import UnsafeContentError, UnsupportedModelError
from .config import SafetyGate
from .core import (
    GATE_ATTRIBUTE,
    IMAGE_ACTIONS,
    GateHandle,
    GateReport,
    InputCheck,
    allow_unchecked,
    apply_image_policy,
    nonfinite_note,
    refuse_unchecked,
    score_texts,
)
from .images import ImageBatch, read_images

TEXT_PROMPTS = ("prompt", "prompt_2", "prompt_3")
IMAGE_INPUTS = ("image", "ip_adapter_image", "control_image")
NOT_TARGET_NOTES = {
    "negative": "a negative prompt steers generation away from its content; it is not scored (the image "
    "policy checks what comes out)",
    "mask_image": "an inpainting mask says where to paint, not what",
    "latents": "the starting noise; the image policy checks what comes out",
}
INPUT_ROLES: tuple[tuple[Callable[[str], bool], str], ...] = (
    (lambda name: name in TEXT_PROMPTS, "text"),
    (lambda name: name.startswith("negative_"), "not a target"),
    (lambda name: name == "callback_on_step_end", "callback"),
    (lambda name: name in IMAGE_INPUTS, "image"),
    (lambda name: name.endswith(("_embeds", "_latents")), "embeddings"),
    (lambda name: name in ("mask_image", "latents"), "not a target"),
)
# The name `allow_unchecked` takes for latent output that cannot be decoded to be checked.
LATENT_OUTPUT = "output_latents"


def role_of(name: str) -> str | None:
    """The role of a pipeline argument (see the module docstring), or None when it is not an input we track."""
    return next((role for matches, role in INPUT_ROLES if matches(name)), None)


def is_text_to_image_pipeline(obj: Any) -> bool:
    from ...diffusers.pipelines import is_diffusers_pipeline

    return is_diffusers_pipeline(obj) and "prompt" in inspect.signature(type(obj).__call__).parameters


def install_pipeline_gate(handle: GateHandle) -> None:
    """`TargetHandler.install_gate` for diffusers pipelines whose `__call__` takes `prompt`."""
    pipe, gate = handle.target, handle.gate
    if not is_text_to_image_pipeline(pipe):
        raise UnsupportedModelError(
            f"add_safety_gate: {type(pipe).__name__}.__call__ takes no prompt argument; the gate wraps text-to-image "
            "pipelines (SD 1.x / 2.x / XL and their img2img / inpaint / SLD variants)."
        )
    if gate.prompt_policy != "off":
        handle.require_threshold("text")
        if handle.classifier.tokenizer is None:
            raise ValueError("SafetyGate: the classifier has no tokenizer; set classifier.tokenizer to check prompts.")
    if gate.prompt_policy == "redirect":  # after the cheap checks: this copies encoders and may download
        handle.state["redirect"] = _redirect_encoders(pipe, gate)
    # All checks done: change the pipeline.
    base = type(pipe)
    pipe.__class__ = _gated_class(base)
    handle.on_remove(lambda: setattr(pipe, "__class__", base))
    if gate.replace_safety_checker and getattr(pipe, "safety_checker", None) is not None:
        checker = pipe.safety_checker
        pipe.safety_checker = None
        handle.on_remove(lambda: setattr(pipe, "safety_checker", checker))


def _redirect_encoders(pipe: Any, gate: SafetyGate) -> dict[str, nn.Module]:
    """Safe-CLIP copies of the text encoders that are not safe yet (empty when `is_safe(pipe)`)."""
    from ...diffusers.pipelines import pipeline_slots
    from ...dispatch import make_safe
    from ...swap import installed_record

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
        return _gated_call(handle, original, self, args, kwargs)

    # Same name and module: diffusers records `__class__.__name__` when saving the pipeline.
    return type(base.__name__, (base,), {"__call__": __call__, "__module__": base.__module__,
                                         "__qualname__": base.__qualname__, "_safe_encoders_gated": True})  # fmt: skip


def _gated_call(handle: GateHandle, original: Any, pipe: Any, args: tuple, kwargs: dict) -> Any:
    report = handle.new_report()
    signature = inspect.signature(original)
    bound = signature.bind(pipe, *args, **kwargs)
    catch_all = next((p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD), None)
    given = {name: value for name, value in bound.arguments.items() if value is not None and name != "self"}
    if catch_all is not None and isinstance(given.get(catch_all), dict):  # **kwargs: its names are inputs too
        given.update({k: v for k, v in given.pop(catch_all).items() if v is not None})
    arguments = Arguments(bound, signature, catch_all)
    by_role: dict[str, list[str]] = {}
    for name in given:
        role = role_of(name)
        if role is not None:
            by_role.setdefault(role, []).append(name)
    for name in by_role.get("not a target", []):
        note = NOT_TARGET_NOTES["negative" if name.startswith("negative_") else name]
        report.add(InputCheck(name, "not a target", "used", note=note))
    for name in by_role.get("embeddings", []):
        _unreadable(handle, report, name, "it holds embeddings / latents, not text or pixels")
    for name in by_role.get("callback", []):
        _guard_callback(handle, report, arguments, given[name])
    blank_rows, swap = _check_prompts(handle, report, arguments, by_role.get("text", []))
    for name in by_role.get("image", []):
        _check_input_image(handle, report, arguments, name, given[name])
    with _swapped_components(pipe, swap):
        output = original(*bound.args, **bound.kwargs)
    per_prompt = int(arguments.get("num_images_per_prompt") or 1)
    blank = [i * per_prompt + j for i in blank_rows for j in range(per_prompt)]
    return _check_output(handle, report, pipe, output, blank, arguments.get("output_type", "pil"))


class Arguments:
    """The call's arguments by name, whether the signature names them or they came through `**kwargs`."""

    def __init__(self, bound: inspect.BoundArguments, signature: inspect.Signature, catch_all: str | None) -> None:
        self.bound, self.signature, self.catch_all = bound, signature, catch_all

    def get(self, name: str, default: Any = None) -> Any:
        if name in self.bound.arguments:
            return self.bound.arguments[name]
        extra = self.bound.arguments.get(self.catch_all or "", {})
        if name in extra:
            return extra[name]
        parameter = self.signature.parameters.get(name)
        return parameter.default if parameter is not None and parameter.default is not parameter.empty else default

    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    def __setitem__(self, name: str, value: Any) -> None:
        if name in self.signature.parameters or self.catch_all is None:
            self.bound.arguments[name] = value
        else:
            self.bound.arguments.setdefault(self.catch_all, {})[name] = value


def _unreadable(handle: GateHandle, report: GateReport, name: str, why: str) -> None:
    """An input the gate cannot check: refused under a strict policy unless allowed, else recorded."""
    if not handle.gate.strict:
        report.add(InputCheck(name, "unchecked", "used", note=f"{why}; prompt_policy={handle.gate.prompt_policy!r}"))
    elif name in handle.gate.allow_unchecked:
        allow_unchecked(report, name, why)
    else:
        refuse_unchecked(report, name, why)


# ------------------------------------------------------------------------------ prompts


def _check_prompts(
    handle: GateHandle, report: GateReport, arguments: Arguments, names: list[str]
) -> tuple[list[int], dict[str, nn.Module]]:
    """Score every text prompt; apply the prompt policy. Returns the rows to blank and the encoders to swap in."""
    gate = handle.gate
    if gate.prompt_policy == "off":
        for name in names:
            report.add(InputCheck(name, "unchecked", "off", note="prompt_policy='off'"))
        report.prompt_action = "off"
        return [], {}
    if not names:
        report.prompt_action = "unchecked"
        return [], {}
    texts = {name: arguments[name] for name in names}
    batch = max((len(value) for value in texts.values() if not isinstance(value, str)), default=1)
    unsafe_rows: set[int] = set()
    checks = []
    for name, value in texts.items():
        prompts = [value] if isinstance(value, str) else list(value)
        verdicts = score_texts(handle, prompts)
        unsafe = [i for i, flag in enumerate(verdicts.unsafe.tolist()) if flag]
        # a single string conditions every row of the batch
        unsafe_rows.update(range(batch) if isinstance(value, str) and unsafe else unsafe)
        checks.append(report.add(InputCheck(name, "checked", "passed", verdicts, nonfinite_note(verdicts))))
    report.prompts = checks[0].verdicts
    if not unsafe_rows:
        report.prompt_action = "passed"
        return [], {}
    action = _prompt_action(gate)
    report.prompt_action = action
    for check in checks:
        if bool(check.verdicts.unsafe.any()):  # type: ignore[union-attr]
            check.action = action
    if gate.prompt_policy == "block" and gate.on_block == "raise":
        detail = "; ".join(
            f"{c.name} {c.verdicts.unsafe.nonzero().flatten().tolist()} (root distance "
            f"{[round(s, 4) for s in c.verdicts.scores[c.verdicts.unsafe].tolist()]}{', ' + c.note if c.note else ''})"
            for c in checks
            if c.verdicts is not None and bool(c.verdicts.unsafe.any())
        )
        raise UnsafeContentError(
            f"safety gate: unsafe prompt(s): {detail} > threshold {handle.require_threshold('text'):.4f}; "
            "generation was blocked. Use prompt_policy='redirect' or 'flag' to generate anyway.",
            report,
        )
    if gate.prompt_policy == "block":  # on_block="blank": every text input of those rows becomes ""
        for name, value in texts.items():
            rows = [value] * batch if isinstance(value, str) else list(value)
            blanked = ["" if i in unsafe_rows else text for i, text in enumerate(rows)]
            arguments[name] = "" if isinstance(value, str) and batch == 1 else blanked
        return sorted(unsafe_rows), {}
    if gate.prompt_policy == "redirect":
        return [], handle.state.get("redirect", {})
    return [], {}


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


# ------------------------------------------------------------------------------ image inputs and callbacks


def _check_input_image(handle: GateHandle, report: GateReport, arguments: Arguments, name: str, value: Any) -> None:
    if handle.gate.image_policy == "off":
        _unreadable(handle, report, name, "image_policy is 'off'")
        return
    batch = read_images(value)
    if batch is None:
        _unreadable(handle, report, name, f"it is not an RGB image the gate can read ({type(value).__name__})")
        return
    check, flags = apply_image_policy(handle, report, name, batch, "generation was not run")
    if bool(flags.any()) and handle.gate.image_policy in ("blur", "black"):
        arguments[name] = batch.restore(batch.pixels)
        check.note = (check.note + "; " if check.note else "") + "the pipeline saw the changed image"


def _guard_callback(handle: GateHandle, report: GateReport, arguments: Arguments, callback: Any) -> None:
    """Wrap `callback_on_step_end` so that a change to any tensor but the latents refuses the call."""
    name = "callback_on_step_end"
    if not handle.gate.strict or name in handle.gate.allow_unchecked:
        _unreadable(handle, report, name, "a step-end callback may replace prompt_embeds mid-call")
        return
    from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

    if isinstance(callback, PipelineCallback | MultiPipelineCallbacks):
        # diffusers reads the tensor names from the callback object; the wrapper must pass them on.
        arguments["callback_on_step_end_tensor_inputs"] = list(callback.tensor_inputs)

    def guarded(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        before = {k: (v, v.clone()) for k, v in tensors.items() if k != "latents" and isinstance(v, torch.Tensor)}
        out = callback(pipe, step, timestep, tensors)
        changed = sorted(k for k, v in (out or {}).items() if k != "latents" and not _same(v, before.get(k))) + sorted(
            k for k, (v, copy_) in before.items() if not torch.equal(v, copy_)
        )
        if changed:
            check.action, check.note = "refused", f"it changed {changed} at step {step}"
            raise UnsafeContentError(
                f"safety gate: callback_on_step_end changed {sorted(set(changed))} at step {step}; the gate only "
                "checks the prompts it was given, so a callback may change the latents only. The call was stopped. "
                f"Opt out with SafetyGate(..., allow_unchecked=({name!r},)) (recorded in the gate's report).",
                report,
            )
        return out

    check = report.add(InputCheck(name, "checked", "passed", note="may change the latents only"))
    arguments[name] = guarded


def _same(value: Any, before: tuple[torch.Tensor, torch.Tensor] | None) -> bool:
    return before is not None and value is before[0] and torch.equal(value, before[1])


# ------------------------------------------------------------------------------ outputs


def _check_output(
    handle: GateHandle, report: GateReport, pipe: Any, output: Any, blank: list[int], output_type: str | None
) -> Any:
    """Check (and treat) every image field of the output: `images` and e.g. SLD's `unsafe_images`."""
    as_tuple = isinstance(output, tuple)
    if as_tuple:
        names, values = [f"output[{i}]" for i in range(len(output))], list(output)
    elif is_dataclass(output):
        names = [f"output.{f.name}" for f in fields(output)]
        values = [getattr(output, f.name) for f in fields(output)]
    else:
        raise UnsupportedModelError(f"safety gate: cannot read a pipeline output of type {type(output).__name__}.")
    flags: list[bool] | None = None
    for index, (name, value) in enumerate(zip(names, values, strict=True)):
        if value is None or (index > 0 and read_images(value) is None):
            continue  # flag lists and other fields
        if index == 0 and output_type == "latent":
            new_value, new_flags = _check_latents(handle, report, pipe, name, value, blank)
        else:
            new_value, new_flags = _check_images(handle, report, name, value, blank if index == 0 else [])
        values[index] = new_value
        if index == 0:
            flags = new_flags
        if index == 0 or name == "output.images":
            report.image_action = report.inputs[-1].action
            report.images = report.inputs[-1].verdicts
    if as_tuple:
        if flags is not None and len(values) > 1 and (values[1] is None or isinstance(values[1], list)):
            values[1] = _merge_flags(values[1], flags)
        return tuple(values)
    for f, value in zip(fields(output), values, strict=True):
        setattr(output, f.name, value)
    if flags is not None and hasattr(output, "nsfw_content_detected"):
        output.nsfw_content_detected = _merge_flags(output.nsfw_content_detected, flags)
    return output


def _check_images(
    handle: GateHandle, report: GateReport, name: str, value: Any, blank: list[int]
) -> tuple[Any, list[bool] | None]:
    batch = read_images(value)
    if batch is None:
        if handle.gate.image_policy == "off" and not blank:
            report.add(InputCheck(name, "unchecked", "off"))
            return value, None
        # An image policy is on (or rows must be blanked) and the output cannot be read: fail closed.
        report.add(InputCheck(name, "unchecked", "refused", note=f"unreadable {type(value).__name__}"))
        raise UnsafeContentError(
            f"safety gate: the pipeline returned {name} as {type(value).__name__}, which the gate cannot read, so "
            "it cannot be checked; the output was withheld. Use output_type 'pil', 'np' or 'pt'.",
            report,
        )
    flags = torch.zeros(len(batch), dtype=torch.bool)
    if handle.gate.image_policy == "off":
        report.add(InputCheck(name, "unchecked", "off", note="image_policy='off'"))
    else:
        _, flags = apply_image_policy(handle, report, name, batch, "the output was withheld")
        flags = flags.clone()
    for i in blank:
        batch.pixels[i] = torch.zeros_like(batch.pixels[i])
        flags[i] = True
    changed = (handle.gate.image_policy in ("blur", "black") and bool(flags.any())) or bool(blank)
    return (batch.restore(batch.pixels) if changed else value), flags.tolist()


def _check_latents(
    handle: GateHandle, report: GateReport, pipe: Any, name: str, latents: Any, blank: list[int]
) -> tuple[Any, list[bool] | None]:
    """output_type="latent": decode with the pipeline's VAE, check; unsafe latents are refused unless flagged."""
    gate = handle.gate
    if blank:
        latents = latents.clone()
        latents[blank] = 0
    if gate.image_policy == "off":
        report.add(InputCheck(name, "unchecked", "off", note="latent output; image_policy='off'"))
        return latents, [i in blank for i in range(len(latents))] if blank else None
    pixels = decode_latents(pipe, latents)
    if pixels is None:
        _unreadable_latents(handle, report, name, latents)
        return latents, None
    batch = ImageBatch(list(pixels), restore=lambda new: new)
    treat = gate.image_policy in ("blur", "black")  # a latent cannot be blurred faithfully: withheld instead
    consequence = "the output was withheld"
    if treat:
        consequence = (
            f"output_type='latent' cannot be {IMAGE_ACTIONS[gate.image_policy]}, so the output was withheld (use "
            "output_type 'pil', 'np' or 'pt' to get treated images)"
        )
    check, flags = apply_image_policy(
        handle, report, name, batch, consequence, policy="block" if treat else gate.image_policy
    )
    check.note = (check.note + "; " if check.note else "") + "latents decoded with the pipeline's VAE to be checked"
    flags = flags.clone()
    flags[blank] = True
    return latents, flags.tolist()


def _unreadable_latents(handle: GateHandle, report: GateReport, name: str, latents: Any) -> None:
    why = f"the latents (shape {tuple(getattr(latents, 'shape', ()))}) cannot be decoded by the gate"
    if LATENT_OUTPUT in handle.gate.allow_unchecked:
        allow_unchecked(report, name, why)
        return
    report.add(InputCheck(name, "unchecked", "refused", note=why))
    raise UnsafeContentError(
        f"safety gate: output_type='latent' with an image policy on, but {why}, so the images cannot be checked; "
        f"the output was withheld. Use output_type 'pil', 'np' or 'pt', or opt out with "
        f"SafetyGate(..., allow_unchecked=({LATENT_OUTPUT!r},)).",
        report,
    )


@torch.no_grad()
def decode_latents(pipe: Any, latents: Any) -> torch.Tensor | None:
    """Decode (B, C, h, w) latents as SD / SD 2 / SDXL / SD 3 pipelines do; pixels (B, 3, H, W) in [0, 1] on the
    CPU, or None when the pipeline has no VAE or the latents do not fit it (e.g. Flux's packed latents)."""
    vae = getattr(pipe, "vae", None)
    config = getattr(vae, "config", None)
    channels = getattr(config, "latent_channels", None)
    if not isinstance(latents, torch.Tensor) or latents.ndim != 4 or channels is None or latents.shape[1] != channels:
        return None
    scaling = getattr(config, "scaling_factor", 1.0) or 1.0
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    parameter = next(vae.parameters())
    values = latents.to(device=parameter.device, dtype=torch.float32)
    if mean is not None and std is not None:
        mean_t = torch.tensor(mean, dtype=values.dtype, device=values.device).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=values.dtype, device=values.device).view(1, -1, 1, 1)
        values = values * std_t / scaling + mean_t
    else:
        values = values / scaling + (getattr(config, "shift_factor", None) or 0.0)
    images = vae.decode(values.to(parameter.dtype), return_dict=False)[0]
    return (images.float().cpu() / 2 + 0.5).clamp(0, 1)


def _merge_flags(existing: list[bool] | None, flags: list[bool]) -> list[bool]:
    if existing is None:
        return list(flags)
    return [bool(a) or bool(b) for a, b in zip(existing, flags, strict=True)]
