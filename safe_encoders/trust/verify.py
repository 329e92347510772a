"""`verify_encoder`: is what this encoder's forward runs a checkpoint the trust store holds?

The answer never rests on what the model says about itself. The swap record in its config (written
by `make_safe`, saved with the model) is only a hint of which trusted entry to compare with first; a
record that names a trusted checkpoint the weights are not is reported as forged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from ..format import canonical_name, combined_digest
from ..registry import EncoderFingerprint
from ..swap import encoder_kind, installed_record
from ..targets import unwrap
from .attestation import attest
from .digests import forward_config
from .store import TrustEntry, TrustStore


@dataclass(frozen=True)
class EncoderVerdict:
    """The verdict on one encoder.

    `verified` is True only when the module is a plain CLIP encoder running nothing but the tensors of
    a trusted checkpoint (`trusted_by` "registry" or "user"); otherwise `reason` says why and
    `first_difference` names the first tensor or module that differs. `forged` marks a swap record
    that names a trusted checkpoint the weights are not."""

    verified: bool
    checkpoint: str | None = None
    trusted_by: str | None = None
    first_difference: str | None = None
    reason: str = ""
    forged: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify_encoder(module: nn.Module, label: str | None = None, *, cached: bool = False) -> EncoderVerdict:
    """Check that `module` (a CLIP text / vision encoder) runs a trusted checkpoint, and nothing else.

    One pass over the encoder's bytes (sha256 of every parameter and buffer as the forward reads it),
    plus a walk of its modules and hooks. With `cached=True` a tensor unchanged since the last check
    (same object, storage and `_version` counter) is not hashed again: a repeated check of an
    in-memory encoder costs a walk of its modules, not a pass over its bytes (see
    `trust.attestation` for what that cache cannot see).
    """
    label = label or type(module).__name__
    kind = encoder_kind(module)
    if kind is None:
        return EncoderVerdict(False, reason=f"{label} is not a transformers CLIP text / vision encoder")
    record = installed_record(module) or {}
    attestation = attest(module, label, cached=cached)
    if attestation.problems:
        where, what = attestation.problems[0]
        more = f" (and {len(attestation.problems) - 1} more)" if len(attestation.problems) > 1 else ""
        return EncoderVerdict(False, record.get("checkpoint"), None, where, f"{where}: {what}{more}")
    live = attestation.digests
    config = unwrap(module).config
    entries = TrustStore().entries(kind)
    hinted = [entry for entry in entries if _named_by(record, entry)]
    for entry in [*hinted, *(entry for entry in entries if entry not in hinted)]:
        if _first_difference(entry, live, kind) is None:
            mismatch = config_mismatch(entry, config)
            if mismatch:
                return EncoderVerdict(False, entry.checkpoint, None, "config", mismatch)
            return EncoderVerdict(True, entry.checkpoint, entry.trusted_by)
    return _not_trusted(record, hinted, entries, live, kind)


def _not_trusted(
    record: dict[str, Any], hinted: list[TrustEntry], entries: list[TrustEntry], live: dict, kind: str
) -> EncoderVerdict:
    claimed = record.get("checkpoint")
    if hinted:
        entry = hinted[0]
        first = _first_difference(entry, live, kind)
        # The record describes these very weights, yet they are not the trusted checkpoint it names: forged.
        forged = _record_describes(record, live)
        why = "the swap record is forged: it names" if forged else "the weights differ from"
        return EncoderVerdict(
            False, claimed, None, first, f"{why} the trusted checkpoint {entry.checkpoint}, first at {first}", forged
        )
    closest = min(entries, key=lambda e: _count_differences(e, live, kind), default=None)
    first = _first_difference(closest, live, kind) if closest is not None else None
    if claimed and _record_describes(record, live):
        why = f"its weights are {claimed}, which this machine does not trust"
        why += " (trust it with safe_encoders.trust_checkpoint or `safe-encoders trust`)"
    elif claimed:
        why = f"its weights are neither {claimed} (as its record says) nor any trusted checkpoint"
    else:
        why = "its weights are no trusted checkpoint" + (" (none is trusted)" if not entries else "")
    return EncoderVerdict(False, claimed, None, first, why)


def _named_by(record: dict[str, Any], entry: TrustEntry) -> bool:
    if not record:
        return False
    return record.get("identity") in entry.identities or (record.get("digest") or None) == entry.digest


def _expected(entry: TrustEntry, key: str, dtype: str, kind: str) -> str | None:
    return entry.tensors.get(dtype, {}).get(canonical_name(key, kind))  # type: ignore[arg-type]


def _first_difference(entry: TrustEntry | None, live: dict[str, tuple[str, str]], kind: str) -> str | None:
    if entry is None:
        return next(iter(live), None)
    for key, (dtype, digest) in live.items():
        if _expected(entry, key, dtype, kind) != digest:
            return key
    return None


def _count_differences(entry: TrustEntry, live: dict[str, tuple[str, str]], kind: str) -> int:
    return sum(_expected(entry, key, dtype, kind) != digest for key, (dtype, digest) in live.items())


def _record_describes(record: dict[str, Any], live: dict[str, tuple[str, str]]) -> bool:
    """Whether the record's digest of the installed weights is that of the live weights."""
    recorded = record.get("installed")
    return bool(recorded) and recorded == combined_digest({key: digest for key, (_, digest) in live.items()})


def config_mismatch(entry: TrustEntry, config: Any) -> str | None:
    """The forward-relevant config of the live encoder must be its checkpoint's (a shorter depth is allowed:
    SD 2 runs the first 23 of ViT-H's 24 layers)."""
    live = forward_config(config)
    trusted = entry.config
    for key in sorted(set(live) & set(trusted)):
        if live[key] != trusted[key]:
            return f"config {key} is {live[key]!r}, but the trusted checkpoint {entry.checkpoint} has {trusted[key]!r}"
    try:
        EncoderFingerprint.from_config(config)
    except (AttributeError, TypeError, ValueError) as error:
        return f"its config is not a CLIP encoder's ({error})"
    return None
