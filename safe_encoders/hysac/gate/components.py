"""The gate where the work happens: hooks on a pipeline's text encoders and on its VAE decoder.

A text encoder's forward pre-hook scores the token ids the encoder is about to receive (decoded back to
text with the pipeline's tokenizer) and refuses tokens the classifier cannot read (e.g. added by
textual inversion). A forward hook on the VAE's decoder scores the images it decoded. The hooks sit
on the modules, so a class-level call, the components reused in a new pipeline, `from_pipe`, SEGA's
editing prompts and arguments that do not exist yet are all checked by construction; a module shared
by two gated pipelines carries both gates' hooks, and `gate.remove()` removes its own.

Inside a gated call (`call_context`) the call-level checks have already scored the prompts: the
encoder hook skips the rows whose tokens are exactly those prompts' (or a negative prompt's), scores
the rest, and the decoder hook leaves the output to the call-level check. Redirect is decided per call
and kept in the call's context (a `ContextVar`, so concurrent calls never see each other's choice):
the encoder's output is replaced by the Safe-CLIP encoder's, which is verified before it is used.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ...errors import UnsafeContentError
from ...trust.attestation import allow_gate_hook
from .core import TOKENIZER_LOCK, GateHandle, GateReport, InputCheck, apply_image_policy, nonfinite_note, score_texts
from .images import ImageBatch

# The name `allow_unchecked` takes for tokens the classifier cannot read (textual inversion and the like).
UNREADABLE_TOKENS = "unreadable_tokens"
# Pipeline attributes holding text the pipeline encodes to steer AWAY from it (not a generation target).
STEER_AWAY_ATTRIBUTES = ("safety_concept",)


@dataclass
class CallContext:
    """What one gated call decided: its report, the token rows already handled, whether to redirect."""

    handle: GateHandle
    report: GateReport
    known: dict[str, set[tuple[int, ...]]] = field(default_factory=dict)
    redirect: bool = False


_CALLS: contextvars.ContextVar[tuple[CallContext, ...]] = contextvars.ContextVar("safe_encoders_gate_calls", default=())
# id(handle), id(module) -> the Safe-CLIP output that replaces the encoder's (set by the pre-hook, read by the hook)
_REDIRECTS: contextvars.ContextVar[dict[tuple[int, int], bool]] = contextvars.ContextVar("safe_encoders_redirects")


def current_call(handle: GateHandle) -> CallContext | None:
    return next((ctx for ctx in reversed(_CALLS.get()) if ctx.handle is handle), None)


@contextlib.contextmanager
def call_context(ctx: CallContext) -> Iterator[CallContext]:
    token = _CALLS.set((*_CALLS.get(), ctx))
    try:
        yield ctx
    finally:
        _CALLS.reset(token)


# ------------------------------------------------------------------------------ tokens


@dataclass(frozen=True)
class EncoderSlot:
    """A text encoder the gate hooks: its pipeline attribute name and the tokenizer that feeds it."""

    name: str
    tokenizer: Any


# The tokenizer methods that set the padding / truncation state and then encode.
LOCKED_METHODS = ("__call__", "tokenize", "encode", "encode_plus", "batch_encode_plus", "_encode_plus",
                  "_batch_encode_plus", "pad")  # fmt: skip


@functools.cache
def _locked_class(base: type) -> type:
    def locked(method: Any) -> Any:
        @functools.wraps(method)
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            with TOKENIZER_LOCK:
                return method(self, *args, **kwargs)

        return call

    methods = {name: locked(getattr(base, name)) for name in LOCKED_METHODS if callable(getattr(base, name, None))}
    return type(base.__name__, (base,), {**methods, "__module__": base.__module__, "__qualname__": base.__qualname__,
                                         "_safe_encoders_locked": True})  # fmt: skip


def lock_tokenizer(handle: GateHandle, tokenizer: Any) -> None:
    """Make each call of a pipeline's tokenizer atomic while the gate is on (same class name, undone on removal).

    A fast tokenizer sets its padding / truncation state, then encodes: two threads calling one pipeline (with
    different settings: diffusers pads to the maximum length, then checks truncation with padding="longest")
    could otherwise get each other's padding."""
    base = type(tokenizer)
    if getattr(base, "_safe_encoders_locked", False):
        return  # another gate holds it already
    tokenizer.__class__ = _locked_class(base)
    handle.on_remove(lambda: setattr(tokenizer, "__class__", base))


def content_ids(tokenizer: Any, row: list[int]) -> tuple[int, ...]:
    """The ids of one row between the start token and the first end token (padding after it dropped)."""
    bos, eos = getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)
    if row and bos is not None and row[0] == bos:
        row = row[1:]
    if eos is not None and eos in row:
        row = row[: row.index(eos)]
    pad = getattr(tokenizer, "pad_token_id", None)
    while row and pad is not None and row[-1] == pad:
        row = row[:-1]
    return tuple(row)


def text_ids(tokenizer: Any, text: str) -> tuple[int, ...]:
    """The content ids the pipeline's tokenizer gives `text`, truncated as diffusers truncates."""
    limit = int(getattr(tokenizer, "model_max_length", 0) or 0)
    kwargs = {"truncation": True, "max_length": limit} if 0 < limit < 100_000 else {}
    return content_ids(tokenizer, list(tokenizer(text, **kwargs)["input_ids"]))


def unreadable_tokens(tokenizer: Any, rows: list[list[int]]) -> list[str]:
    """Tokens of `rows` the classifier cannot read: added to the tokenizer (not special ones), or out of its range."""
    added = {i: token for i, token in getattr(tokenizer, "added_tokens_decoder", {}).items() if not token.special}
    size = len(tokenizer)
    found: list[str] = []
    for row in rows:
        for i in row:
            if i in added:
                name = str(added[i])
            elif not 0 <= i < size:
                name = f"<id {i}>"
            else:
                continue
            if name not in found:
                found.append(name)
    return found


def known_rows(pipe: Any, slots: list[EncoderSlot], texts: list[str]) -> dict[str, set[tuple[int, ...]]]:
    """For each encoder, the content ids of `texts` and of the pipeline's steer-away texts (e.g. SLD's concept)."""
    texts = [*texts, *(getattr(pipe, a) for a in STEER_AWAY_ATTRIBUTES if isinstance(getattr(pipe, a, None), str))]
    with TOKENIZER_LOCK:
        return {slot.name: {text_ids(slot.tokenizer, text) for text in texts} for slot in slots}


# ------------------------------------------------------------------------------ hooks


def hook_text_encoder(handle: GateHandle, module: nn.Module, slot: EncoderSlot) -> None:
    """Score the token ids `module` receives before it runs; replace its output by Safe-CLIP's when redirecting."""
    key = (id(handle), id(module))

    def before(mod: nn.Module, args: tuple, kwargs: dict) -> None:
        if not handle.active:
            return
        redirect = check_tokens(handle, mod, slot, args, kwargs)
        _redirects()[key] = redirect

    def after(mod: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if not handle.active or not _redirects().pop(key, False):
            return None
        return redirect_output(handle, mod, slot, args, kwargs, output)

    hooks = (  # the gate's own hooks: a verified Safe-CLIP stays verified while the gate holds it
        module.register_forward_pre_hook(allow_gate_hook(before), with_kwargs=True),
        module.register_forward_hook(allow_gate_hook(after), with_kwargs=True),
    )
    handle.on_remove(lambda: [hook.remove() for hook in hooks])


def _redirects() -> dict[tuple[int, int], bool]:
    try:
        return _REDIRECTS.get()
    except LookupError:
        value: dict[tuple[int, int], bool] = {}
        _REDIRECTS.set(value)
        return value


def check_tokens(handle: GateHandle, module: nn.Module, slot: EncoderSlot, args: tuple, kwargs: dict) -> bool:
    """Check what the encoder receives; True when its output must come from the Safe-CLIP encoder instead."""
    gate, ctx = handle.gate, current_call(handle)
    report = ctx.report if ctx is not None else handle.new_report()
    where = f"{slot.name} (tokens)"
    ids = kwargs.get("input_ids", args[0] if args else None)
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.is_floating_point():
        why = f"{slot.name} was called without token ids (e.g. with inputs_embeds)"
        _refuse_or_record(handle, report, where, why, "inputs_embeds")
        return bool(ctx is not None and ctx.redirect)
    rows = ids.tolist()
    unknown = unreadable_tokens(slot.tokenizer, rows)
    if unknown:
        why = f"the token(s) {unknown} it received are not in the classifier's vocabulary (e.g. textual inversion)"
        _refuse_or_record(handle, report, where, why, UNREADABLE_TOKENS)
    contents = [content_ids(slot.tokenizer, row) for row in rows]
    known = ctx.known.get(slot.name, set()) if ctx is not None else set()
    todo = sorted({c for c in contents if c and c not in known})
    redirect = bool(ctx is not None and ctx.redirect)
    if not todo:
        return redirect
    texts = [slot.tokenizer.decode(list(c)) for c in todo]
    verdicts = score_texts(handle, texts)
    unsafe = [text for text, flag in zip(texts, verdicts.unsafe.tolist(), strict=True) if flag]
    check = report.add(InputCheck(where, "checked", "passed", verdicts, nonfinite_note(verdicts)))
    if not unsafe:
        return redirect
    if gate.prompt_policy == "block":
        check.action = "blocked"
        raise UnsafeContentError(
            f"safety gate: {slot.name} was about to encode unsafe text {unsafe} (root distance above "
            f"{verdicts.threshold:.4f}); the gate checks every encoder call, so the call was refused.",
            report,
        )
    if gate.prompt_policy == "redirect":
        check.action = "redirected"
        return True
    check.action = "flagged"
    return redirect


def _refuse_or_record(handle: GateHandle, report: GateReport, where: str, why: str, opt_out: str) -> None:
    gate = handle.gate
    if not gate.strict:
        report.add(InputCheck(where, "unchecked", "used", note=f"{why}; prompt_policy={gate.prompt_policy!r}"))
        return
    if opt_out in gate.allow_unchecked:
        report.add(InputCheck(where, "allowed unchecked", "used", note=f"{why}; allowed by allow_unchecked"))
        report.opt_outs.append(opt_out)
        return
    report.add(InputCheck(where, "unchecked", "refused", note=why))
    raise UnsafeContentError(
        f"safety gate: {why}, so the gate cannot check it and the call was refused. Opt out explicitly with "
        f"SafetyGate(..., allow_unchecked=({opt_out!r},)) (recorded in the gate's report).",
        report,
    )


def redirect_output(handle: GateHandle, module: nn.Module, slot: EncoderSlot, args: tuple, kwargs: dict, output: Any):
    """The output of the Safe-CLIP encoder for the same inputs, after checking it is still a trusted Safe-CLIP."""
    encoder = handle.state.get("redirect", {}).get(slot.name, module)
    if not trusted_encoder(handle, encoder):
        raise UnsafeContentError(
            f"safety gate: prompt_policy='redirect' relies on {slot.name}'s Safe-CLIP encoder, but it no longer "
            f"holds a trusted Safe-CLIP ({handle.state.get('verify_reason') or 'it was replaced or changed'}), so the "
            "call was refused. Add the gate again after make_safe; a Safe-CLIP of your own must be trusted first "
            "(safe_encoders.trust_checkpoint(path), or `safe-encoders trust PATH`).",
            handle.last_report,
        )
    if encoder is module:
        return output  # the pipeline's own encoder is the Safe-CLIP one
    with torch.no_grad():
        return encoder(*args, **kwargs)


# ------------------------------------------------------------------------------ redirect verification

_VERIFY_LOCK = threading.Lock()


def is_trusted_safe_clip(encoder: nn.Module, handle: GateHandle | None = None) -> bool:
    """Whether `encoder` holds a trusted Safe-CLIP (the one place the gate asks; a full pass over its weights).
    The reason of a refusal is kept in the handle's state for the error message."""
    from ...trust import verify_encoder

    verdict = verify_encoder(encoder)
    if handle is not None:
        handle.state["verify_reason"] = verdict.reason
    return verdict.verified


def fingerprint(module: nn.Module) -> tuple | None:
    """Identity, storage and version counter of every tensor: what changes when a weight is replaced or written
    in place. None (always verify in full) when offload hooks may read the weights from elsewhere."""
    if any(hasattr(m, "_hf_hook") for m in module.modules()):
        return None
    from ...swap import installed_record

    tensors = [*module.named_parameters(), *module.named_buffers()]
    # hooks and instance-level forwards change what the encoder computes without touching a tensor
    extras = [
        (tuple(map(id, sub._forward_pre_hooks.values())), tuple(map(id, sub._forward_hooks.values())),
         id(sub.__dict__.get("forward")), type(sub))
        for sub in module.modules()
    ]  # fmt: skip
    tensor_state = ((n, id(t), t.data_ptr(), t._version) for n, t in tensors)
    return (id(module), id(installed_record(module)), *extras, *tensor_state)


def trusted_encoder(handle: GateHandle, encoder: nn.Module) -> bool:
    """`is_trusted_safe_clip`, skipped when no tensor of the encoder changed since the last full check passed."""
    cache = handle.state.setdefault("verified", {})
    now = fingerprint(encoder)
    if now is not None and cache.get(id(encoder)) == now:
        return True
    with _VERIFY_LOCK:
        if not is_trusted_safe_clip(encoder, handle):
            cache.pop(id(encoder), None)
            return False
        if now is not None:
            cache[id(encoder)] = now
    return True


# ------------------------------------------------------------------------------ the VAE decoder


def hook_vae_decoder(handle: GateHandle, decoder: nn.Module) -> None:
    """Score the images the VAE decoder produces ([-1, 1]); apply the image policy to them (outside gated calls:
    inside one, the call-level check scores the pipeline's output)."""

    def after(mod: nn.Module, args: tuple, output: Any) -> Any:
        if not handle.active or current_call(handle) is not None or handle.gate.image_policy == "off":
            return None
        if not isinstance(output, torch.Tensor) or output.ndim != 4 or output.shape[1] != 3:
            return None  # not an image batch (e.g. a decoder that returns latents): left to the output check
        pixels = (output.detach().float().cpu() / 2 + 0.5).clamp(0, 1)
        batch = ImageBatch(list(pixels), restore=lambda new: new)
        report = handle.new_report()
        _, flags = apply_image_policy(handle, report, "vae.decoder (images)", batch, "the decoded images were withheld")
        if not bool(flags.any()) or handle.gate.image_policy == "flag":
            return None
        changed = torch.stack(batch.pixels) * 2 - 1
        return changed.to(device=output.device, dtype=output.dtype)

    hook = decoder.register_forward_hook(after)
    handle.on_remove(hook.remove)
