"""What the pipeline gate does to each input of a call: the arguments by name (`Arguments`), the prompts
(scored, `prompt_policy` applied), the input images (`image_policy` applied to what the pipeline will
see), a step-end callback (wrapped so that it may change only the latents), and inputs it cannot read."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from ...errors import UnsafeContentError
from .config import SafetyGate
from .core import (
    GateHandle,
    GateReport,
    InputCheck,
    allow_unchecked,
    apply_image_policy,
    nonfinite_note,
    refuse_unchecked,
    score_texts,
)
from .images import input_reading, read_input_images


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


def unreadable_input(handle: GateHandle, report: GateReport, name: str, why: str) -> None:
    """An input the gate cannot check: refused under a strict policy unless allowed, else recorded."""
    if not handle.gate.strict:
        report.add(InputCheck(name, "unchecked", "used", note=f"{why}; prompt_policy={handle.gate.prompt_policy!r}"))
    elif name in handle.gate.allow_unchecked:
        allow_unchecked(report, name, why)
    else:
        refuse_unchecked(report, name, why)


# ------------------------------------------------------------------------------ prompts


def check_prompts(
    handle: GateHandle, report: GateReport, arguments: Arguments, names: list[str], concepts: list[str]
) -> tuple[list[int], bool]:
    """Score every text prompt; apply the prompt policy. Returns the rows to blank and whether to redirect.

    `concepts` (e.g. SEGA's `editing_prompt`) apply to every row: one unsafe concept makes every row unsafe."""
    gate = handle.gate
    if gate.prompt_policy == "off":
        for name in names:
            report.add(InputCheck(name, "unchecked", "off", note="prompt_policy='off'"))
        report.prompt_action = "off"
        return [], False
    if not names:
        report.prompt_action = "unchecked"
        return [], False
    texts = {name: arguments[name] for name in names}
    for name, value in texts.items():
        is_list = isinstance(value, list | tuple) and all(isinstance(t, str) for t in value)
        if not isinstance(value, str) and not is_list:
            unreadable_input(handle, report, name, f"it is not text or a list of texts ({type(value).__name__})")
            return [], False
    rows = {name: value for name, value in texts.items() if name not in concepts}
    batch = max((len(value) for value in rows.values() if not isinstance(value, str)), default=1)
    unsafe_rows: set[int] = set()
    checks = []
    for name, value in texts.items():
        prompts = [value] if isinstance(value, str) else list(value)
        verdicts = score_texts(handle, prompts)
        unsafe = [i for i, flag in enumerate(verdicts.unsafe.tolist()) if flag]
        # a single string (or a concept) conditions every row of the batch
        every_row = isinstance(value, str) or name in concepts
        unsafe_rows.update(range(batch) if every_row and unsafe else unsafe)
        checks.append(report.add(InputCheck(name, "checked", "passed", verdicts, nonfinite_note(verdicts))))
    report.prompts = checks[0].verdicts
    if not unsafe_rows:
        report.prompt_action = "passed"
        return [], False
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
            if name in concepts:  # an unsafe concept would steer every row: it is dropped
                if any(c.name == name and bool(c.verdicts.unsafe.any()) for c in checks):  # type: ignore[union-attr]
                    arguments[name] = None
                continue
            row_texts = [value] * batch if isinstance(value, str) else list(value)
            blanked = ["" if i in unsafe_rows else text for i, text in enumerate(row_texts)]
            arguments[name] = "" if isinstance(value, str) and batch == 1 else blanked
        return sorted(unsafe_rows), False
    return [], gate.prompt_policy == "redirect"


def _prompt_action(gate: SafetyGate) -> str:
    if gate.prompt_policy == "block":
        return "blocked" if gate.on_block == "raise" else "blanked"
    return {"redirect": "redirected", "flag": "flagged"}[gate.prompt_policy]


# ------------------------------------------------------------------------------ image inputs and callbacks


def check_input_image(
    handle: GateHandle, report: GateReport, arguments: Arguments, pipe: Any, name: str, value: Any
) -> None:
    """Score an image input as the pipeline will read it; apply `image_policy` ("blur" / "black" replace it)."""
    if handle.gate.image_policy == "off":
        unreadable_input(handle, report, name, "image_policy is 'off'")
        return
    batch, why = read_input_images(value, input_reading(pipe, name))
    if batch is None:
        unreadable_input(handle, report, name, why)
        return
    check, flags = apply_image_policy(handle, report, name, batch, "generation was not run")
    if bool(flags.any()) and handle.gate.image_policy in ("blur", "black"):
        arguments[name] = batch.restore(batch.pixels)
        check.note = (check.note + "; " if check.note else "") + "the pipeline saw the changed image"


def check_options(handle: GateHandle, report: GateReport, name: str, value: Any) -> None:
    """Attention-processor keyword arguments: harmless numbers / strings / booleans; tensors cannot be read."""
    values = list(value.values()) if isinstance(value, dict) else [value]
    if all(isinstance(v, int | float | str | bool) or v is None for v in values):
        report.add(InputCheck(name, "not a target", "used", note="numbers / strings for the attention processors"))
        return
    unreadable_input(handle, report, name, "it holds values other than numbers / strings (e.g. tensors)")


def guard_callback(handle: GateHandle, report: GateReport, arguments: Arguments, callback: Any) -> None:
    """Wrap `callback_on_step_end` so that a change to any tensor but the latents refuses the call."""
    name = "callback_on_step_end"
    if not handle.gate.strict or name in handle.gate.allow_unchecked:
        unreadable_input(handle, report, name, "a step-end callback may replace prompt_embeds mid-call")
        return
    from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

    if isinstance(callback, PipelineCallback | MultiPipelineCallbacks):
        # diffusers reads the tensor names from the callback object; the wrapper must pass them on.
        arguments["callback_on_step_end_tensor_inputs"] = list(callback.tensor_inputs)

    def guarded(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        before = {k: (v, v.clone()) for k, v in tensors.items() if k != "latents" and isinstance(v, torch.Tensor)}
        returned = callback(pipe, step, timestep, tensors)
        if returned is not None and not isinstance(returned, dict):
            check.action, check.note = "refused", f"it returned a {type(returned).__name__}, not a dict"
            raise UnsafeContentError(
                f"safety gate: callback_on_step_end returned a {type(returned).__name__}, not a dict; the gate "
                "cannot tell what the pipeline would read from it. The call was stopped.",
                report,
            )
        # What the pipeline reads: a plain dict copied from the dict's own storage (a subclass cannot hide keys).
        out = dict(dict.items(returned)) if returned is not None else {}
        changed = sorted(k for k, v in out.items() if k != "latents" and not _same(v, before.get(k))) + sorted(
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
        return out if returned is not None else returned

    check = report.add(InputCheck(name, "checked", "passed", note="may change the latents only"))
    arguments[name] = guarded


def _same(value: Any, before: tuple[torch.Tensor, torch.Tensor] | None) -> bool:
    return before is not None and value is before[0] and torch.equal(value, before[1])
