"""What the pipeline gate does to each input of a call: the arguments by name (`Arguments`), the prompts
(scored, `prompt_policy` applied), the input images (`image_policy` applied to what the pipeline will
see), a step-end callback (wrapped so that it may change only the latents), and inputs it cannot read."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

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
from .images import read_images


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
def swapped_components(pipe: Any, components: dict[str, nn.Module]) -> Iterator[None]:
    """Set `components` (e.g. Safe-CLIP text encoders) on the pipeline for one call, then put the originals back."""
    saved = {name: getattr(pipe, name) for name in components}
    try:
        for name, module in components.items():
            setattr(pipe, name, module)
        yield
    finally:
        for name, module in saved.items():
            setattr(pipe, name, module)


# ------------------------------------------------------------------------------ image inputs and callbacks


def check_input_image(handle: GateHandle, report: GateReport, arguments: Arguments, name: str, value: Any) -> None:
    """Score an image input; apply `image_policy` to what the pipeline will see ("blur" / "black" replace it)."""
    if handle.gate.image_policy == "off":
        unreadable_input(handle, report, name, "image_policy is 'off'")
        return
    batch = read_images(value)
    if batch is None:
        unreadable_input(handle, report, name, f"it is not an RGB image the gate can read ({type(value).__name__})")
        return
    check, flags = apply_image_policy(handle, report, name, batch, "generation was not run")
    if bool(flags.any()) and handle.gate.image_policy in ("blur", "black"):
        arguments[name] = batch.restore(batch.pixels)
        check.note = (check.note + "; " if check.note else "") + "the pipeline saw the changed image"


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
