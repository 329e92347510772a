"""The gate on a diffusers pipeline: checks at the call (a subclass whose `__call__` checks every input,
then the output) and where the work happens (hooks on the text encoders and the VAE decoder,
`components.py`).

Every argument of a call has a role (`roles.py`): text and images are scored, inputs the gate cannot
read are refused under a strict prompt policy ("block", "redirect") unless `SafetyGate.allow_unchecked`
names them, harmless ones pass, and an argument with no role is refused (a pipeline whose `__call__`
takes one is refused when the gate is added).
"""

from __future__ import annotations

import copy
import functools
import inspect
from typing import Any

from torch import nn

from ...errors import UnsupportedModelError
from .components import (
    CallContext,
    EncoderSlot,
    call_context,
    hook_text_encoder,
    hook_vae_decoder,
    known_rows,
    lock_tokenizer,
)
from .config import SafetyGate
from .core import GATE_ATTRIBUTE, GateHandle, InputCheck
from .pipeline_inputs import (
    Arguments,
    check_input_image,
    check_options,
    check_prompts,
    guard_callback,
    unreadable_input,
)
from .pipeline_outputs import check_output
from .roles import role_of, unknown_arguments, unknown_arguments_message

NOT_TARGET_NOTES = {
    "negative": "a negative prompt steers generation away from its content (a negative image too); it is not "
    "scored (the image policy checks what comes out)",
    "mask_image": "an inpainting mask says where to paint, not what",
    "latents": "the starting noise; the image policy checks what comes out",
}


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
    if gate.strict:
        unknown = unknown_arguments(inspect.signature(type(pipe).__call__), gate.allow_unchecked)
        if unknown:
            raise UnsupportedModelError(unknown_arguments_message(type(pipe).__name__, unknown))
    if gate.prompt_policy != "off":
        handle.require_threshold("text")
        if handle.classifier.tokenizer is None:
            raise ValueError("SafetyGate: the classifier has no tokenizer; set classifier.tokenizer to check prompts.")
    slots = _encoder_slots(pipe) if gate.prompt_policy != "off" else []
    if gate.prompt_policy == "redirect":  # after the cheap checks: this copies encoders and may download
        handle.state["redirect"] = _redirect_encoders(pipe, gate)
    handle.state["slots"] = slots
    # All checks done: change the pipeline (each change registers its undo).
    base = type(pipe)
    pipe.__class__ = _gated_class(base)
    handle.on_remove(lambda: setattr(pipe, "__class__", base))
    for slot in slots:
        hook_component(handle, slot.name, getattr(pipe, slot.name))
        lock_tokenizer(handle, slot.tokenizer)
    hook_component(handle, "vae", getattr(pipe, "vae", None))
    if gate.replace_safety_checker and getattr(pipe, "safety_checker", None) is not None:
        checker = pipe.safety_checker
        pipe.safety_checker = None
        handle.on_remove(lambda: setattr(pipe, "safety_checker", checker))


def _encoder_slots(pipe: Any) -> list[EncoderSlot]:
    """The pipeline's text encoders (`text_encoder*` components) and the tokenizers that feed them."""
    components = pipe.components
    slots = []
    for name, module in components.items():
        if name.startswith("text_encoder") and isinstance(module, nn.Module):
            tokenizer = components.get("tokenizer" + name.removeprefix("text_encoder"))
            if tokenizer is None:
                raise UnsupportedModelError(
                    f"add_safety_gate: {type(pipe).__name__}.{name} has no tokenizer beside it, so the gate cannot "
                    "read the token ids it receives."
                )
            slots.append(EncoderSlot(name, tokenizer))
    return slots


def hook_component(handle: GateHandle, name: str, module: Any) -> None:
    """Put the gate's hooks on a pipeline component (a text encoder or the VAE), once per module."""
    if not isinstance(module, nn.Module):
        return
    hooked = handle.state.setdefault("hooked", set())
    if id(module) in hooked:
        return
    if name == "vae":
        decoder = getattr(module, "decoder", None)
        if isinstance(decoder, nn.Module):
            hook_vae_decoder(handle, decoder)
    elif handle.gate.prompt_policy != "off":
        slot = next((s for s in handle.state.get("slots", []) if s.name == name), None)
        if slot is None:
            return
        hook_text_encoder(handle, module, slot)
    hooked.add(id(module))
    handle.state.setdefault("modules", []).append(module)  # keeps ids unique while the gate holds them


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
        module = copy.deepcopy(slot.module)
        for hooks in (module._forward_pre_hooks, module._forward_hooks):  # another gate's hooks, copied along
            hooks.clear()
        encoders[slot.label.removeprefix("pipe.")] = make_safe(module, gate.redirect_checkpoint)
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

    def __setattr__(self: Any, name: str, value: Any) -> None:
        base.__setattr__(self, name, value)
        handle = self.__dict__.get(GATE_ATTRIBUTE)
        if handle is not None and handle.active:  # a component replaced after the gate was added is hooked too
            hook_component(handle, name, value)

    # Same name and module: diffusers records `__class__.__name__` when saving the pipeline.
    return type(base.__name__, (base,), {"__call__": __call__, "__setattr__": __setattr__,
                                         "__module__": base.__module__, "__qualname__": base.__qualname__,
                                         "_safe_encoders_gated": True})  # fmt: skip


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
        by_role.setdefault(role_of(name) or "unknown", []).append(name)
    for name in by_role.get("unknown", []):
        unreadable_input(handle, report, name, "the gate has no role for this argument (it cannot tell what it does)")
    for name in by_role.get("not a target", []):
        note = NOT_TARGET_NOTES["negative" if name.startswith("negative_") else name]
        report.add(InputCheck(name, "not a target", "used", note=note))
    for name in by_role.get("embeddings", []):
        unreadable_input(handle, report, name, "it holds embeddings / latents, not text or pixels")
    for name in by_role.get("options", []):
        check_options(handle, report, name, given[name])
    for name in by_role.get("callback", []):
        guard_callback(handle, report, arguments, given[name])
    texts = by_role.get("text", []) + by_role.get("concept", [])
    blank_rows, redirect = check_prompts(handle, report, arguments, texts, by_role.get("concept", []))
    for name in by_role.get("image", []):
        check_input_image(handle, report, arguments, pipe, name, given[name])
    handled = [arguments[name] for name in texts + by_role.get("not a target", [])]
    strings = [text for value in handled for text in ([value] if isinstance(value, str) else
               value if isinstance(value, list | tuple) else []) if isinstance(text, str)]  # fmt: skip
    ctx = CallContext(handle, report, known_rows(pipe, handle.state.get("slots", []), strings), redirect)
    per_prompt = int(arguments.get("num_images_per_prompt") or 1)
    blank = [i * per_prompt + j for i in blank_rows for j in range(per_prompt)]
    with call_context(ctx):  # the output check decodes latent output with the VAE: still this call
        output = original(*bound.args, **bound.kwargs)
        return check_output(handle, report, pipe, output, blank, arguments.get("output_type", "pil"))
