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

import copy
import functools
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from ...errors import UnsupportedModelError
from .config import SafetyGate
from .core import GATE_ATTRIBUTE, GateHandle, InputCheck
from .pipeline_inputs import (
    Arguments,
    check_input_image,
    check_prompts,
    guard_callback,
    swapped_components,
    unreadable_input,
)
from .pipeline_outputs import check_output

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
        unreadable_input(handle, report, name, "it holds embeddings / latents, not text or pixels")
    for name in by_role.get("callback", []):
        guard_callback(handle, report, arguments, given[name])
    blank_rows, swap = check_prompts(handle, report, arguments, by_role.get("text", []))
    for name in by_role.get("image", []):
        check_input_image(handle, report, arguments, name, given[name])
    with swapped_components(pipe, swap):
        output = original(*bound.args, **bound.kwargs)
    per_prompt = int(arguments.get("num_images_per_prompt") or 1)
    blank = [i * per_prompt + j for i in blank_rows for j in range(per_prompt)]
    return check_output(handle, report, pipe, output, blank, arguments.get("output_type", "pil"))
