"""`make_safe` and `is_safe`: find the target's CLIP encoders, check everything, then swap.

Each kind of target (a diffusers pipeline, a LLaVA model, a bare CLIP encoder) is a `TargetHandler`
in `HANDLERS`, an ordered list: the first handler whose `matches` accepts the object wins. A
handler only says where the encoders are; the checks and the swap are shared.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from .errors import ArchitectureMismatchError, PartialSwapError, UnsupportedModelError
from .registry import EncoderKind, find_checkpoint
from .sources import EncoderSource, resolve_source
from .swap import (
    SwapPlan,
    apply_swap,
    cast_encoder,
    encoder_kind,
    has_projection,
    installed_record,
    plan_swap,
)

logger = logging.getLogger("safe_encoders")
T = TypeVar("T")


@dataclass(frozen=True)
class EncoderSlot:
    """One encoder of a target. `kind` is None when it is not a CLIP encoder we can replace."""

    label: str
    module: nn.Module | None
    kind: EncoderKind | None
    why_not: str = ""


@dataclass(frozen=True)
class TargetHandler:
    """Where one kind of target keeps its encoders, and (optionally) how a HySAC safety gate attaches to it.

    `install_gate(handle)` is called by `hysac.add_safety_gate` with a `hysac.GateHandle` once the gate's
    classifier and thresholds are checked; it changes `handle.target` and registers the undo with
    `handle.on_remove`. A handler without it cannot be gated.
    """

    name: str
    matches: Callable[[Any], bool]
    slots: Callable[[Any], list[EncoderSlot]]
    install_gate: Callable[[Any], None] | None = None


HANDLERS: list[TargetHandler] = []


def register_handler(handler: TargetHandler, *, first: bool = False) -> None:
    """Add a handler (names are unique); `first=True` lets it win over the built-in ones."""
    if any(existing.name == handler.name for existing in HANDLERS):
        raise ValueError(f"A target handler named {handler.name!r} is already registered.")
    HANDLERS.insert(0, handler) if first else HANDLERS.append(handler)


def _handler_for(obj: Any) -> TargetHandler:
    for handler in HANDLERS:
        if handler.matches(obj):
            return handler
    raise UnsupportedModelError(
        f"make_safe does not know how to make a {type(obj).__module__}.{type(obj).__name__} safe. "
        f"Supported: {', '.join(h.name for h in HANDLERS)}."
    )


def make_safe(
    obj: T,
    checkpoint: Any = "auto",
    *,
    torch_dtype: torch.dtype | None = None,
    allow_partial: bool = False,
    **hub_kwargs: Any,
) -> T:
    """Replace the CLIP encoder(s) of `obj` with Safe-CLIP ones, in place, and return `obj`.

    Args:
        obj: a diffusers pipeline (SD 1.x / 2.x / XL, `StableDiffusionPipelineSafe`, img2img,
            inpaint, ...), a transformers LLaVA model, or a bare CLIP text / vision model.
        checkpoint: "auto" (pick the registered checkpoint whose architecture fits each
            encoder), a registry name, a Hub id, a local folder or one of our `.safetensors` files.
        torch_dtype: cast the swapped encoder(s) to this dtype; None keeps their current dtype.
        allow_partial: swap what can be swapped when some encoder has no Safe-CLIP counterpart
            (e.g. SDXL's OpenCLIP bigG `text_encoder_2`), with a warning, instead of raising.
        **hub_kwargs: `revision`, `token`, `cache_dir`, `local_files_only`, `force_download`.

    Everything is checked (architectures, tensor names and shapes, digests) before the first
    weight is changed: either every planned encoder is swapped or none is. Calling it again with
    the same checkpoint does nothing.
    """
    handler = _handler_for(obj)
    slots = handler.slots(obj)
    clip_slots = [slot for slot in slots if slot.kind is not None]
    if not clip_slots:
        reasons = "; ".join(f"{s.label}: {s.why_not}" for s in slots) or "it has no encoder at all"
        raise UnsupportedModelError(
            f"{type(obj).__name__} ({handler.name}) has no CLIP encoder that Safe-CLIP can replace ({reasons})."
        )
    sources: dict[EncoderKind, EncoderSource] = {}
    plans: list[SwapPlan] = []
    misses: list[tuple[EncoderSlot, str]] = [(s, s.why_not) for s in slots if s.kind is None]
    first_error: ArchitectureMismatchError | None = None
    for slot in clip_slots:
        assert slot.module is not None and slot.kind is not None
        try:
            source = _source_for(slot, checkpoint, sources, hub_kwargs)
            plans.append(plan_swap(slot.module, source, slot.label))
        except ArchitectureMismatchError as error:
            first_error = first_error or error
            misses.append((slot, str(error)))
    if not plans:
        assert first_error is not None
        raise first_error
    if misses:
        detail = "; ".join(f"{slot.label} ({why})" for slot, why in misses)
        if not allow_partial:
            raise PartialSwapError(
                f"Only part of {type(obj).__name__} can be made safe: no Safe-CLIP replacement for {detail}. "
                "Pass allow_partial=True to swap the rest anyway (the unswapped encoders still carry "
                "their unsafe concepts)."
            )
        warnings.warn(f"make_safe: partial swap, {detail} left unchanged.", UserWarning, stacklevel=2)
    todo = [plan for plan in plans if (installed_record(plan.module) or {}).get("identity") != plan.source.identity]
    for plan in plans:
        if plan not in todo:
            logger.info("safe_encoders: %s already holds %s; nothing to do.", plan.label, plan.source.label)
    # Read (and verify) everything first, so that a corrupt file cannot leave a half-swapped target.
    loaded = [plan.source.read(plan.names) for plan in todo]
    for plan, tensors in zip(todo, loaded, strict=True):
        apply_swap(plan, tensors, torch_dtype=torch_dtype)
    if torch_dtype is not None:
        for plan in plans:
            if plan not in todo:
                cast_encoder(plan.module, torch_dtype, plan.label)
    return obj


def _source_for(
    slot: EncoderSlot, checkpoint: Any, cache: dict[EncoderKind, EncoderSource], hub_kwargs: dict[str, Any]
) -> EncoderSource:
    assert slot.module is not None and slot.kind is not None
    if isinstance(checkpoint, str) and checkpoint == "auto":
        try:
            entry = find_checkpoint(slot.module.config, has_projection=has_projection(slot.module, slot.kind))
        except ArchitectureMismatchError as error:
            raise ArchitectureMismatchError(f"{slot.label}: {error}") from None
        return resolve_source(entry, slot.kind, **hub_kwargs)
    if slot.kind not in cache:
        cache[slot.kind] = resolve_source(checkpoint, slot.kind, **hub_kwargs)
    return cache[slot.kind]


def swap_report(obj: Any) -> dict[str, dict[str, Any] | None]:
    """For each encoder of `obj`: the record of its Safe-CLIP swap, or None if it is not swapped."""
    try:
        handler = _handler_for(obj)
    except UnsupportedModelError:
        return {}
    return {slot.label: installed_record(slot.module) if slot.kind else None for slot in handler.slots(obj)}


def is_safe(obj: Any) -> bool:
    """True when every encoder of `obj` that conditions generation carries a Safe-CLIP swap.

    A partial swap (`allow_partial=True`) reports False: an unswapped encoder still knows the
    unsafe concepts. `swap_report` says which encoder holds what.
    """
    report = swap_report(obj)
    return bool(report) and all(record is not None for record in report.values())


# ----------------------------------------------------------------------- built-in handlers


def _bare_encoder_slots(module: Any) -> list[EncoderSlot]:
    return [EncoderSlot(label=type(module).__name__, module=module, kind=encoder_kind(module))]


BARE_ENCODER = TargetHandler(
    name="transformers CLIP text/vision model (CLIPTextModel, CLIPVisionModel, ...WithProjection)",
    matches=lambda obj: encoder_kind(obj) is not None,
    slots=_bare_encoder_slots,
)
