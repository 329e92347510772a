"""`make_safe` and `is_safe`: find the target's CLIP encoders, check everything, then swap.

Each kind of target (a diffusers pipeline, a LLaVA model, a bare CLIP encoder) is a `TargetHandler`
in `HANDLERS`, an ordered list: the first handler whose `matches` accepts the object wins. A
handler only says where the encoders are; the checks and the swap are shared.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from .errors import (
    ArchitectureMismatchError,
    InvalidArgumentError,
    PartialSwapError,
    SafeEncodersError,
    UnsupportedModelError,
)
from .registry import Checkpoint, EncoderKind, find_checkpoint
from .sources import resolve_source
from .sources.encoder_source import EncoderSource
from .swap import (
    SwapPlan,
    encoder_kind,
    has_projection,
    install,
    installed_record,
    parse_dtype,
    place,
    plan_swap,
    recast,
    verify_installed,
)
from .trust import pin_registry_source, verify_encoder

logger = logging.getLogger("safe_encoders")
T = TypeVar("T")


@dataclass(frozen=True)
class EncoderSlot:
    """One encoder of a target. `kind` is None when it is not a CLIP encoder we can replace."""

    label: str
    module: nn.Module | None
    kind: EncoderKind | None
    why_not: str = ""
    tokenizer: Any = None  # the tokenizer that feeds this (text) encoder, when the target has one


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
    torch_dtype: torch.dtype | str | None = None,
    allow_partial: bool = False,
    **hub_kwargs: Any,
) -> T:
    """Replace the CLIP encoder(s) of `obj` with Safe-CLIP ones, in place, and return `obj`.

    Args:
        obj: a diffusers pipeline (SD 1.x / 2.x / XL, `StableDiffusionPipelineSafe`, img2img,
            inpaint, ...), a transformers LLaVA model, or a bare CLIP text / vision model.
        checkpoint: "auto" (pick the registered checkpoint whose architecture fits each
            encoder), a registry name, a Hub id, a local folder or one of our `.safetensors` files.
        torch_dtype: cast the swapped encoder(s) to this dtype (`torch.float16`, "float16", "bfloat16", ...);
            None or "auto" keeps their current dtype.
        allow_partial: swap what can be swapped when some encoder has no Safe-CLIP counterpart
            (e.g. SDXL's OpenCLIP bigG `text_encoder_2`), with a warning, instead of raising.
        **hub_kwargs: `revision`, `token`, `cache_dir`, `local_files_only`, `force_download`.

    Everything is checked before the first weight is changed (architectures, wrappers, tensor names
    and shapes, where every weight lives, and every source tensor: digest, floating point, finite),
    reading the checkpoint a slice at a time. The weights are then copied where the forward pass reads
    them (offloaded copies included), read back through the same hooks and compared; if anything
    fails, every original weight is restored and the error raised: either every planned encoder is
    swapped or none is. Calling it again with the same checkpoint does nothing (after checking that
    the encoder still holds it).
    """
    _check_checkpoint_argument(checkpoint)
    dtype = parse_dtype(torch_dtype)
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
            plans.append(place(plan_swap(slot.module, source, slot.label), dtype))
            _check_tokenizer(slot, source)
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
    todo = [plan for plan in plans if not _already_holds(plan)]
    for plan in plans:
        if plan not in todo:
            logger.info("safe_encoders: %s already holds %s; nothing to do.", plan.label, plan.source.label)
    # Check every source tensor first (a slice at a time), so that a bad file cannot leave a half-swapped target.
    digests = [plan.source.validate(plan.names) for plan in todo]
    install(todo, digests, torch_dtype=dtype)
    _pin_registry_sources(todo)
    if dtype is not None:
        for plan in plans:
            if plan not in todo:
                recast(plan, dtype)
    return obj


def _check_checkpoint_argument(checkpoint: Any) -> None:
    if isinstance(checkpoint, str | os.PathLike | Checkpoint) and str(checkpoint):
        return
    raise InvalidArgumentError(
        f"checkpoint={checkpoint!r} ({type(checkpoint).__name__}) is not a checkpoint. make_safe accepts 'auto', a "
        "registry name (safe_encoders.list_checkpoints()), a safe_encoders.Checkpoint, a Hub id 'org/name', or the "
        "path of a local folder or .safetensors file. Nothing was changed."
    )


def _pin_registry_sources(plans: list[SwapPlan]) -> None:
    """Trust on first use: pin each registry checkpoint just read from the Hub (a failure never undoes the swap;
    the encoder then simply does not verify until the user trusts the checkpoint)."""
    for source in {id(plan.source): plan.source for plan in plans if plan.source.provenance.get("registry")}.values():
        try:
            pin_registry_source(source)
        except (OSError, SafeEncodersError) as error:
            logger.warning("safe_encoders: could not pin %s in the trust store: %s", source.label, error)


def _already_holds(plan: SwapPlan) -> bool:
    if (installed_record(plan.module) or {}).get("identity") != plan.source.identity:
        return False
    check = verify_installed(plan.module, plan.label)
    if not check.verified:
        logger.warning(
            "safe_encoders: %s records %s but its weights differ (%s%s); swapping again.",
            plan.label,
            plan.source.label,
            check.reason,
            f", first at {check.first_difference}" if check.first_difference else "",
        )
    return check.verified


def _check_tokenizer(slot: EncoderSlot, source: EncoderSource) -> None:
    rows = source.shapes.get("text_model.embeddings.token_embedding.weight", (0,))[0]
    if slot.tokenizer is None or not rows:
        return
    try:
        size = len(slot.tokenizer)
    except TypeError:
        return
    if size < rows:
        warnings.warn(
            f"{slot.label}: its tokenizer has {size} tokens but the encoder's embedding table has {rows} rows; "
            "rows past the tokenizer's vocabulary are never used. Check that the tokenizer belongs to this "
            "encoder (a CLIP tokenizer has 49408 tokens).",
            UserWarning,
            stacklevel=3,
        )


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


def swap_report(obj: Any, *, verify: bool = False) -> dict[str, dict[str, Any] | None]:
    """For each encoder of `obj` (a pipeline, a LLaVA model or a bare CLIP encoder): the record of its
    Safe-CLIP swap, or None if it is not swapped.

    The record lives in the encoder's config (it is saved with the model), so on its own it proves
    nothing: anyone can write one. With `verify=True` each CLIP encoder is checked against the trust
    store instead (`trust.verify_encoder`: the module tree, hooks and forward, and the digest of every
    tensor the forward reads, against the checkpoints this machine trusts), and its entry also says:
    `checkpoint` (the trusted checkpoint it runs, else the one its record claims), `trusted_by`
    ("registry", "user" or None), `verified` (bool), `first_difference` (the first tensor or module that
    differs, or None), `reason` and `forged` (the record names a trusted checkpoint the weights are not).
    That costs one pass over each encoder's bytes.
    """
    try:
        handler = _handler_for(obj)
    except UnsupportedModelError:
        return {}
    report: dict[str, dict[str, Any] | None] = {}
    for slot in handler.slots(obj):
        record = installed_record(slot.module) if slot.kind else None
        if record is not None:
            record = {key: value for key, value in record.items() if key != "installed_tensors"}
        if verify and slot.kind is not None:
            assert slot.module is not None
            verdict = verify_encoder(slot.module, slot.label)
            if record is not None or verdict.verified:
                fields = verdict.as_dict()
                if fields["checkpoint"] is None:
                    del fields["checkpoint"]
                record = {**(record or {}), **fields}
        report[slot.label] = record
    return report


def is_safe(obj: Any, *, verify: bool = False) -> bool:
    """True when every encoder of `obj` that conditions generation carries a Safe-CLIP swap.

    Without `verify` this reads the swap records in the encoders' configs, which travel with a saved
    model: a record can be forged (write one into a config.json) and is only a hint. With
    `verify=True` it is True only when every encoder is verified against the trust store (a trusted
    checkpoint, `trusted_by` "registry" or "user", and nothing else in the forward; see `swap_report`).
    A partial swap (`allow_partial=True`) reports False: an unswapped encoder still knows the unsafe
    concepts. `swap_report` says which encoder holds what.
    """
    report = swap_report(obj, verify=verify)
    return bool(report) and all(
        record is not None and (not verify or (record["verified"] and record["trusted_by"] is not None))
        for record in report.values()
    )


# ----------------------------------------------------------------------- built-in handlers


def _bare_encoder_slots(module: Any) -> list[EncoderSlot]:
    return [EncoderSlot(label=type(module).__name__, module=module, kind=encoder_kind(module))]


BARE_ENCODER = TargetHandler(
    name="transformers CLIP text/vision model (CLIPTextModel, CLIPVisionModel, ...WithProjection)",
    matches=lambda obj: encoder_kind(obj) is not None,
    slots=_bare_encoder_slots,
)
