"""Putting an encoder's weights into an existing CLIP module, in place, and checking that the forward uses them.

Weights are written where the forward pass reads them (`placement`): the module's own tensors, or
the copies accelerate / diffusers offloading keeps in memory or on disk, so dtype, device, wrappers
and hooks stay as they are and no second copy of the encoder is kept alive. Everything is checked
before the first write (`plan_swap`, `EncoderSource.validate`, and which originals can be read back
from the file the model is memory-mapped from: `origins`); `install` then points each weight it can
at a private memory map of the checked file, as `from_pretrained` does (`mapped`: no byte written),
and copies the others tensor by tensor (straight from the checkpoint into the memory the forward
reads where it can), checks that the forward reads what was written and that the checkpoint is
still the file that was checked, and restores the original weights if anything fails.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from .errors import (
    ArchitectureMismatchError,
    CorruptCheckpointError,
    InvalidArgumentError,
    SwapVerificationError,
    UnsupportedModelError,
)
from .format import PROJECTION, RECORD_KEY, combined_digest, module_names, tensor_digest
from .mapped import Remapped
from .origins import FileOrigin, MappedFiles
from .placement import InMemory, TensorHome, locate
from .registry import EncoderFingerprint, EncoderKind, fitting_checkpoint_names
from .sources.encoder_source import CHECK_THREADS, EncoderSource
from .streaming import Span, as_bytes, digest_start, same_bits, stream_fd
from .targets import refuse_wrapped, unwrap

logger = logging.getLogger("safe_encoders")
_SHORT = 16  # hex digits kept per tensor in the record: enough to name the first tensor that differs


def encoder_kind(module: Any) -> EncoderKind | None:
    """ "text" / "vision" for transformers CLIP text / vision models (with or without projection), else None."""
    model_type = getattr(getattr(module, "config", None), "model_type", None)
    if not isinstance(module, nn.Module):
        return None
    return {"clip_text_model": "text", "clip_vision_model": "vision"}.get(model_type)


def has_projection(module: nn.Module, kind: EncoderKind) -> bool:
    return PROJECTION[kind] in module_names(unwrap(module).state_dict().keys(), kind)


@dataclass(frozen=True)
class SwapPlan:
    """What will be copied where; built and checked before anything is changed."""

    label: str
    module: nn.Module  # the encoder itself (inside a torch.compile wrapper, the wrapped module)
    source: EncoderSource
    names: dict[str, str]  # published name -> key in module.state_dict()
    layers_used: int
    homes: dict[str, TensorHome] = field(default_factory=dict, repr=False)  # key -> where the forward reads it

    @property
    def truncated(self) -> bool:
        return self.layers_used < self.source.fingerprint.num_layers


def plan_swap(module: nn.Module, source: EncoderSource, label: str) -> SwapPlan:
    """Check that `source` fits `module` (architecture, wrappers, tensor names and shapes) and say what to
    copy. Nothing is read from `source` and nothing is written; `place` then says where each weight lives."""
    kind = encoder_kind(module)
    if kind is None:
        raise UnsupportedModelError(f"{label} is a {type(module).__name__}, not a transformers CLIP text/vision model.")
    module = unwrap(module)
    refuse_wrapped(module, label)
    target = EncoderFingerprint.from_config(module.config)
    projection = has_projection(module, kind)
    problems = source.fingerprint.mismatches(target, target_has_projection=projection)
    if problems:
        fitting = fitting_checkpoint_names(target, has_projection=projection)
        hint = (
            f"Registered checkpoints that fit it: {', '.join(fitting)}."
            if fitting
            else ("No registered Safe-CLIP checkpoint fits it.")
        )
        raise ArchitectureMismatchError(
            f"{source.label} provides a {source.fingerprint.describe()} encoder, but {label} is a "
            f"{target.describe()} encoder ({'; '.join(problems)}). {hint}"
        )
    state = module.state_dict(keep_vars=True)
    names = module_names(state.keys(), kind)
    missing = sorted(name for name in names if name not in source.shapes)
    if missing:
        raise CorruptCheckpointError(
            f"{source.label} lacks {len(missing)} tensor(s) that {label} needs, e.g. {missing[:3]}."
        )
    wrong = [
        f"{name}: {tuple(source.shapes[name])} vs {tuple(state[key].shape)}"
        for name, key in names.items()
        if tuple(source.shapes[name]) != tuple(state[key].shape)
    ]
    if wrong:
        raise ArchitectureMismatchError(f"{source.label} does not fit {label}: shapes differ for {wrong[:3]}.")
    return SwapPlan(label, module, source, names, target.num_layers)


def place(plan: SwapPlan, torch_dtype: torch.dtype | None = None) -> SwapPlan:
    """`plan` with the home of every weight (where the forward reads it); refuses, before anything is written,
    weights no placement can update and a dtype change of offloaded weights."""
    homes = locate(plan.module, list(plan.names.values()), plan.label)
    if torch_dtype is not None and any(h.dtype != torch_dtype for h in homes.values()):
        offloaded = [h for h in homes.values() if h.where != "parameter"]
        if offloaded:
            raise UnsupportedModelError(
                f"{plan.label} is offloaded ({offloaded[0].where}); torch_dtype cannot change it in place. Nothing "
                "was changed. Load the pipeline in the dtype you want, or pass torch_dtype=None."
            )
    return replace(plan, homes=homes)


class Rollback:
    """The original bytes of every tensor about to change, and everything else a swap changes; `restore` puts
    it all back.

    A weight pointed at a private map of its checkpoint (`mapped`) gets the tensor it held back (kept, not
    copied). A weight proven (before the first write, by `keep_originals`) to equal the file it is
    memory-mapped from is restored from that file and not copied (`origins`); any other is spilled to
    an unlinked temporary file (not kept in memory), one large write per tensor.
    """

    def __init__(self) -> None:
        self._file: Any = None  # the spill file, created on the first tensor that needs a copy
        # In the order saved (restored in reverse: a tied weight saved after its twin was written holds new bytes):
        # (home, spill-file offset, dtype, numel) for a copy, (home, origin) for a weight read back from its file.
        self._saved: list[tuple[TensorHome, int, torch.dtype, int] | tuple[TensorHome, FileOrigin]] = []
        self._origins: dict[int, FileOrigin] = {}  # id(home) -> the file place its live bytes were proven equal to
        self._maps: MappedFiles | None = None
        self._seen: set[int] = set()
        self._casts: list[tuple[nn.Module, torch.dtype]] = []
        self._records: list[tuple[Any, Any]] = []
        self.remapped = Remapped()  # weights pointed at their checkpoint's private map, and what they held before

    def keep_originals(self, homes: list[TensorHome]) -> None:
        """Before anything is written: find which homes hold exactly the bytes of the file they are mapped from
        (compared bit for bit, a few tensors at a time), so that `save` need not copy them."""
        self._maps = self._maps or MappedFiles()
        candidates = []
        for home in homes:
            live = home.read() if isinstance(home, InMemory) else None
            origin = self._maps.origin(live.detach()) if live is not None else None
            if origin is not None:
                candidates.append((home, origin, live.detach().view(-1)))
        with ThreadPoolExecutor(max_workers=CHECK_THREADS) as pool:  # file reads and compares release the GIL
            proven = pool.map(lambda entry: entry[1].matches(entry[2]), candidates)
            for (home, origin, _), same in zip(candidates, proven, strict=True):
                if same:
                    self._origins[id(home)] = origin

    def save(self, home: TensorHome) -> None:
        if id(home) in self._seen:
            return
        self._seen.add(id(home))
        origin = self._origins.get(id(home))
        if origin is not None:
            self._saved.append((home, origin))
            return
        value = home.read().detach().to("cpu").contiguous().view(-1)
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="safe-encoders-rollback-", buffering=0)  # noqa: SIM115
        offset = self._file.seek(0, 2)
        data = as_bytes(value)
        while data:  # one large write per tensor, straight from the tensor's memory
            data = data[self._file.write(data) :]
        self._saved.append((home, offset, value.dtype, value.numel()))

    def cast(self, module: nn.Module, dtype: torch.dtype, homes: dict[str, TensorHome]) -> None:
        for home in homes.values():
            self.save(home)
        self._casts.append((module, _module_dtype(module)))
        module.to(dtype)
        for home in homes.values():
            home.retype(dtype)

    def record(self, module: nn.Module, record: dict[str, Any]) -> None:
        self._records.append((module.config, getattr(module.config, RECORD_KEY, None)))
        setattr(module.config, RECORD_KEY, record)

    def restore(self) -> None:
        """Put everything back; raises SwapVerificationError (after restoring all it can) if a weight could not
        be restored bit for bit (the file it is read back from changed meanwhile, or writing it failed)."""
        for config, old in reversed(self._records):
            setattr(config, RECORD_KEY, old)
        self.remapped.restore()  # first: a cast undone below applies to the tensors held before
        for module, dtype in reversed(self._casts):
            module.to(dtype)
        lost: list[tuple[str, str]] = []  # (key, why)
        for home, *where in reversed(self._saved):
            try:
                if isinstance(where[0], FileOrigin):
                    if not _restore_from_file(home, where[0]):
                        lost.append((home.key, "the file the model was loaded from changed during make_safe"))
                    continue
                offset, dtype, numel = where
                home.retype(dtype)
                end = offset + numel * dtype.itemsize
                _write_all(home, stream_fd(self._file.fileno(), offset, end, dtype, "the rollback file"))
            except Exception as error:  # one weight that cannot be written back must not stop the rest
                lost.append((home.key, f"writing it back failed: {error!r}"))
        if lost:
            raise SwapVerificationError(
                f"The original weights of {len(lost)} tensor(s) could not be restored: "
                f"{'; '.join(f'{key}: {why}' for key, why in lost[:3])}. The model now holds a mix of old and new "
                "weights and is not recorded as swapped; load it again."
            )

    def close(self) -> None:
        self.remapped.close()
        if self._file is not None:
            self._file.close()
        if self._maps is not None:
            self._maps.close()


def _restore_from_file(home: TensorHome, origin: FileOrigin) -> bool:
    """Write `home`'s original bytes back from the file it was proven equal to; False if that file changed or
    could not be read (the others are still restored)."""
    home.retype(origin.dtype)
    if not origin.file.unchanged():
        return False
    try:
        _write_all(home, origin.chunks())
    except (OSError, CorruptCheckpointError):  # truncated or unreadable meanwhile
        return False
    return origin.file.unchanged() and origin.matches(home.read().detach().to("cpu").view(-1))


def _write_all(home: TensorHome, chunks: Iterator[torch.Tensor]) -> None:
    offset = 0
    for chunk in chunks:
        home.write(offset, chunk)
        offset += chunk.numel()
    home.finish()


def install(plans: list[SwapPlan], digests: list[dict[str, str]], *, torch_dtype: torch.dtype | None = None) -> None:
    """Copy each plan's (already validated) source into its module tensor by tensor, check that the forward
    reads the new weights and that no source file changed since it was validated, and record the swap; on
    any failure restore every original weight and re-raise."""
    rollback = Rollback()
    try:
        rollback.keep_originals([home for plan in plans for home in plan.homes.values()])
        for plan, source_digests in zip(plans, digests, strict=True):
            _install_one(plan, source_digests, torch_dtype, rollback)
    except BaseException:
        rollback.restore()
        raise
    finally:
        rollback.close()


def _install_one(
    plan: SwapPlan, source_digests: dict[str, str], torch_dtype: torch.dtype | None, rollback: Rollback
) -> None:
    module, source = plan.module, plan.source
    if torch_dtype is not None and _module_dtype(module) != torch_dtype:
        rollback.cast(module, torch_dtype, plan.homes)
    installed: dict[str, str] = {}
    # Read back once all is written: a weight written where the forward reads it only after `finish`, and a
    # weight sharing memory with another (tied), which a later write to its twin may overwrite.
    tied = _sharing_memory(plan.homes)
    unseen: list[str] = [name for name, key in plan.names.items() if key in tied]
    with torch.no_grad():
        for name, key in plan.names.items():
            home = plan.homes[key]
            dtype = home.dtype
            stored = source.dtype(name)
            # Hashed while copied when cast, or when the file's unchanged identity would prove nothing (not local).
            hashed = dtype != stored or not source.on_local_filesystem(name)
            digest = digest_start(dtype, source.shapes[name]) if hashed else None
            span = source.span(name) if digest is None else None
            # No byte written: the weight becomes its slice of a private map of the checked file (`mapped`).
            written = None if span is None else rollback.remapped.put(module, key, home, span, source.identity_of(span))
            if written is None:
                rollback.save(home)
                written = _fill(home, source, span) if span is not None else None
            if written is not None:  # the memory the forward reads now holds (or is) the file's bytes
                live = home.read()
                if live.data_ptr() != written.data_ptr() or live.dtype != dtype or live.shape != written.shape:
                    unseen.append(name)
            else:
                _copy_chunks(home, source.chunks(name), dtype, digest, name, unseen)
            installed[key] = digest.hexdigest() if digest is not None else source_digests[name]
            if dtype == stored and installed[key] != source_digests[name]:
                raise SwapVerificationError(
                    f"{plan.label}: {name} changed while make_safe was copying it (after it was checked); the "
                    "original weights were restored. Call make_safe again once nothing writes the checkpoint."
                )
        for home in plan.homes.values():
            home.finish()
        changed = source.changed_since_validation()
        if changed:
            raise SwapVerificationError(
                f"{plan.label}: {changed[0]} changed while make_safe was copying it (after it was checked); the "
                "original weights were restored. Call make_safe again once nothing writes the checkpoint."
            )
        for name in dict.fromkeys(unseen):
            key = plan.names[name]
            if not _reads_back(plan.homes[key], source, name):
                raise SwapVerificationError(
                    f"{plan.label}: after the swap, {key} as the forward reads it ({plan.homes[key].where}) is not "
                    f"the checkpoint's tensor {name}. The original weights were restored. Call make_safe before "
                    "offloading the model, or load it without offloading."
                )
    rollback.record(module, _record(plan, installed))
    logger.info(
        "safe_encoders: %s <- %s (%s%s) [%s, %s]",
        plan.label,
        source.label,
        source.fingerprint.describe(),
        f", first {plan.layers_used} layers" if plan.truncated else "",
        _module_dtype(module),
        _module_device(module),
    )


def _sharing_memory(homes: dict[str, TensorHome]) -> set[str]:
    """Keys of the in-memory homes whose bytes overlap another's (tied weights, overlapping views)."""
    extents = []
    for key, home in homes.items():
        tensor = home.read() if isinstance(home, InMemory) else None
        if tensor is not None and tensor.numel():
            last = sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride(), strict=True))
            start = tensor.data_ptr()
            extents.append((str(tensor.device), start, start + (last + 1) * tensor.element_size(), key))
    shared: set[str] = set()
    reach: tuple[str, int, str] = ("", 0, "")  # device, end and key of the extent reaching furthest so far
    for device, start, end, key in sorted(extents):
        if device == reach[0] and start < reach[1]:
            shared.update((key, reach[2]))
        if device != reach[0] or end > reach[1]:
            reach = (device, end, key)
    return shared


def _fill(home: TensorHome, source: EncoderSource, span: Span) -> torch.Tensor | None:
    fd = source.open_checked(span.path)  # the very file validated, not just one at the same path
    try:
        return home.fill(fd, span.start, span.end - span.start)
    finally:
        os.close(fd)


def _copy_chunks(
    home: TensorHome,
    chunks: Iterator[torch.Tensor],
    dtype: torch.dtype,
    digest: Any,
    name: str,
    unseen: list[str],
) -> None:
    """Write a source tensor slice by slice (cast to `dtype`, fed to `digest` if any); a home whose writes land at
    once is compared with each slice just written, any other is left in `unseen` to be read back after `finish`."""
    offset, landed = 0, home.immediate
    for chunk in chunks:
        value = chunk.to(dtype)
        home.write(offset, value)
        if landed:  # compare with the slice just written while it is at hand (no second read of the file)
            live = home.read().detach().reshape(-1)[offset : offset + value.numel()]  # a copy only if strided
            landed = same_bits(live.to("cpu"), value)
        if digest is not None:
            digest.update(as_bytes(value))
        offset += value.numel()
    if not landed or offset != math.prod(home.shape):
        unseen.append(name)


def _reads_back(home: TensorHome, source: EncoderSource, name: str) -> bool:
    """Whether the live tensor is, bit for bit, the source tensor cast to the live dtype."""
    live = home.read().detach().to("cpu").contiguous().view(-1)
    offset = 0
    for chunk in source.chunks(name):
        expected = chunk.to(live.dtype)
        if not same_bits(live[offset : offset + expected.numel()], expected):
            return False
        offset += expected.numel()
    return offset == live.numel()


def _record(plan: SwapPlan, installed: dict[str, str]) -> dict[str, Any]:
    return {
        "checkpoint": plan.source.label,
        "identity": plan.source.identity,
        "digest": plan.source.digest,
        "base_model": plan.source.base_model,
        "layers": f"{plan.layers_used}/{plan.source.fingerprint.num_layers}",
        **installed_fields(installed),
    }


def installed_fields(installed: dict[str, str]) -> dict[str, Any]:
    """The record's digest of what was installed: {state-dict key: tensor_digest} -> "installed" (the
    combined digest) and "installed_tensors" (a short prefix per tensor, to name the first that differs)."""
    return {
        "installed": combined_digest(installed),
        "installed_tensors": {key: digest[:_SHORT] for key, digest in installed.items()},
    }


def recast(plan: SwapPlan, torch_dtype: torch.dtype) -> None:
    """Cast an encoder that already holds its swap to `torch_dtype` and re-record what it now holds."""
    module = plan.module
    if _module_dtype(module) == torch_dtype:
        return
    rollback = Rollback()
    try:
        rollback.cast(module, torch_dtype, plan.homes)
        installed = {key: tensor_digest(plan.homes[key].read()) for key in plan.names.values()}
        rollback.record(module, {**(installed_record(module) or {}), **installed_fields(installed)})
    except BaseException:
        rollback.restore()
        raise
    finally:
        rollback.close()


@dataclass(frozen=True)
class Verification:
    verified: bool
    first_difference: str | None = None
    reason: str = ""


def verify_installed(module: nn.Module, label: str) -> Verification:
    """Re-read every recorded tensor as the forward would (through offload hooks) and compare with the record.

    Whether the encoder still holds what its own record says (make_safe uses it to skip a repeated swap):
    a consistency check, not a trust check, since a record can be forged (`trust.verify_encoder` is that).
    Costs one pass over the encoder's bytes (a sha256 of each tensor)."""
    record = installed_record(module)
    if record is None:
        return Verification(False, reason="no swap recorded")
    expected = record.get("installed_tensors")
    if not isinstance(expected, dict) or not expected or "installed" not in record:
        return Verification(False, reason="the record holds no digest of the installed weights (an older record)")
    module = unwrap(module)
    state = module.state_dict(keep_vars=True)
    absent = [key for key in expected if key not in state]
    if absent:
        return Verification(False, absent[0], "the encoder has no such tensor")
    try:
        homes = locate(module, list(expected), label)
    except UnsupportedModelError as error:
        return Verification(False, reason=str(error))
    live: dict[str, str] = {}
    first = None
    for key in expected:
        live[key] = tensor_digest(homes[key].read())
        if first is None and live[key][:_SHORT] != expected[key]:
            first = key
    if combined_digest(live) == record["installed"]:
        return Verification(True)
    return Verification(False, first, "a tensor differs from what was installed")


def installed_record(module: Any) -> dict[str, Any] | None:
    """The record of the Safe-CLIP swap into `module`, or None if none happened."""
    record = getattr(getattr(module, "config", None), RECORD_KEY, None)
    return record if isinstance(record, dict) else None


def parse_dtype(value: Any) -> torch.dtype | None:
    """A `torch_dtype` argument as transformers accepts it: a torch.dtype, its name ("float16", "torch.float16",
    "bfloat16", ...), or None / "auto" (keep the current dtype)."""
    if value is None or (isinstance(value, str) and value == "auto"):
        return None
    if isinstance(value, torch.dtype) and value in _DTYPES.values():
        return value
    if isinstance(value, str) and value.removeprefix("torch.") in _DTYPES:
        return _DTYPES[value.removeprefix("torch.")]
    raise InvalidArgumentError(
        f"torch_dtype={value!r} is not a floating-point dtype; use one of {', '.join(sorted(_DTYPES))}, a "
        "torch.dtype such as torch.float16, or 'auto' / None to keep the current dtype."
    )


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
           "float": torch.float32, "half": torch.float16, "double": torch.float64}  # fmt: skip


def _module_dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def _module_device(module: nn.Module) -> str:
    hook = getattr(module, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    return str(device) if device is not None else str(next(module.parameters()).device)
