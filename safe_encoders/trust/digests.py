"""The digests a trust entry holds: every tensor of a checkpoint as stored and cast to each runtime dtype.

One streaming pass over the checkpoint (a slice at a time, never a whole tensor): each slice is
checked (floating point, finite), hashed as stored, then cast to each of `RUNTIME_DTYPES` and hashed
again, exactly as `make_safe(torch_dtype=...)` casts it (`chunk.to(dtype)`).
"""

from __future__ import annotations

import hashlib
import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from ..errors import CorruptCheckpointError
from ..format import combined_digest
from ..sources.encoder_source import EncoderSource
from ..streaming import WEIGHT_DTYPES, as_bytes, digest_start
from .store import TrustedBy, TrustEntry

# The dtypes an encoder runs in; a live tensor of another dtype matches no trusted digest (fails closed).
RUNTIME_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Config entries the forward reads that no tensor shape pins down (the shapes are in the tensor digests).
FORWARD_CONFIG_KEYS = ("hidden_act", "layer_norm_eps", "num_attention_heads", "hidden_size", "image_size", "patch_size")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def forward_config(config: Any) -> dict[str, Any]:
    """The forward-relevant entries (`FORWARD_CONFIG_KEYS`) of a config object or dict."""
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    return {key: get(key) for key in FORWARD_CONFIG_KEYS if get(key) is not None}


def source_digests(source: EncoderSource) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """({dtype name: {tensor name: digest}}, {tensor name: stored dtype name}) of every tensor of `source`,
    each checked (floating point, finite, and the file's own digest for one of our files)."""
    tensors: dict[str, dict[str, str]] = {}
    stored: dict[str, str] = {}
    identities, started = source.file_identities(), time.time_ns()
    for name in sorted(source.shapes):
        dtype = source.dtype(name)
        if dtype not in WEIGHT_DTYPES:
            raise CorruptCheckpointError(f"{source.label}: tensor {name} is {dtype}, not a floating-point weight.")
        shape = tuple(source.shapes[name])
        hashes = {dtype: digest_start(dtype, shape)}
        for target in RUNTIME_DTYPES:
            hashes.setdefault(target, digest_start(target, shape))
        for chunk in source.chunks(name):
            if chunk.numel() and not all(map(math.isfinite, map(float, torch.aminmax(chunk)))):
                raise CorruptCheckpointError(
                    f"{source.label}: tensor {name} holds NaN or Inf values; a damaged checkpoint is never trusted."
                )
            for target, digest in hashes.items():
                digest.update(as_bytes(chunk if target == dtype else chunk.to(target)))
        for target, digest in hashes.items():
            tensors.setdefault(dtype_name(target), {})[name] = digest.hexdigest()
        stored[name] = dtype_name(dtype)
        if source.expected_digests is not None and source.expected_digests.get(name) != tensors[stored[name]][name]:
            raise CorruptCheckpointError(
                f"{source.label}: tensor {name} does not match the digest recorded in the file; it was modified."
            )
    # The same checks make_safe makes: a make_safe from the unchanged file need not read it again.
    source.remember_checked({name: tensors[stored[name]][name] for name in stored}, identities, started)
    return tensors, stored


def entry_from_source(source: EncoderSource, trusted_by: TrustedBy, origin: dict[str, Any]) -> TrustEntry:
    """A trust entry for every tensor of `source` (one streaming pass over it)."""
    tensors, stored = source_digests(source)
    stored_digests = {name: tensors[stored[name]][name] for name in stored}
    return TrustEntry(
        kind=source.kind,
        checkpoint=source.label,
        trusted_by=trusted_by,
        digest=combined_digest(stored_digests),
        tensors=tensors,
        stored_dtypes=stored,
        config=forward_config(source.config),
        source=origin,
        identities=(source.identity,),
        trusted_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (what the Hub reports for an LFS file), read 8 MB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()
