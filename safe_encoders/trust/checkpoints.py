"""Adding to the trust store: checkpoints the user trusts, and the registry's checkpoints pinned on first use.

A registry checkpoint downloaded from the Hub is pinned the first time it is used: its repo id, the
commit the download resolved to, and the sha256 of each file it was read from (for LFS files, the
name huggingface_hub gives the file's blob is the sha256 the Hub reports; they must agree). Later
the same repository at another commit, or a file whose bytes differ from the pin, is not trusted
automatically: the user decides (`trust_checkpoint`).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from ..errors import ArchitectureMismatchError, CheckpointNotFoundError, CorruptCheckpointError
from ..sources import resolve_source
from ..sources.encoder_source import EncoderSource
from .digests import entry_from_source, file_sha256
from .store import TrustEntry, TrustStore

logger = logging.getLogger("safe_encoders")
_LFS_BLOB = re.compile(r"^[0-9a-f]{64}$")


def trust_checkpoint(path_or_id: Any, *, kind: str | None = None, **hub_kwargs: Any) -> list[TrustEntry]:
    """Trust a checkpoint on this machine: every encoder it holds (or only `kind`, "text" / "vision").

    `path_or_id` is anything `make_safe` accepts as a checkpoint (one of our `.safetensors` files, a
    transformers folder, a registry name, a Hub id). Each tensor is read once (checked: floating
    point, finite, our files' own digests) and its digests are written to the trust store
    (`trust_dir()`). From then on `is_safe(..., verify=True)` accepts an encoder running exactly it.
    Returns the entries written.
    """
    if kind not in (None, "text", "vision"):
        raise CheckpointNotFoundError(f"kind={kind!r}: pass 'text', 'vision' or None (every encoder it holds).")
    kinds = [kind] if kind else ["text", "vision"]
    sources: list[EncoderSource] = []
    errors: list[Exception] = []
    for wanted in kinds:
        try:
            sources.append(resolve_source(path_or_id, wanted, **hub_kwargs))  # type: ignore[arg-type]
        except (ArchitectureMismatchError, CorruptCheckpointError, CheckpointNotFoundError) as error:
            errors.append(error)
    if not sources:
        raise errors[0]
    for error in errors:  # a checkpoint of one encoder only: the other kind is simply absent
        logger.info("safe_encoders: %s: %s", path_or_id, error)
    store = TrustStore()
    written = []
    for source in sources:
        entry = entry_from_source(source, "user", _origin(source))
        store.add(entry)
        written.append(entry)
        logger.info("safe_encoders: trusted %s (%s encoder) in %s", source.label, source.kind, store.root)
    return written


def _origin(source: EncoderSource) -> dict[str, Any]:
    origin: dict[str, Any] = {"label": source.label}
    for key in ("repo_id", "commit"):
        if key in source.provenance:
            origin[key] = source.provenance[key]
    return origin


def pin_registry_source(source: EncoderSource) -> TrustEntry | None:
    """Trust on first use: pin a registry checkpoint just read from the Hub cache (see the module docstring).

    Returns the entry written, or None when it was already pinned or a pin disagrees (logged as a
    warning: the encoder then verifies only once the user trusts it)."""
    repo_id, commit = source.provenance.get("repo_id"), source.provenance.get("commit")
    if not repo_id or not commit:
        return None
    files = {}
    config_file = source.provenance.get("config_file")
    for path in [*source.files, *([Path(config_file)] if config_file else [])]:
        digest = file_sha256(path)
        blob = Path(path).resolve().name
        if _LFS_BLOB.match(blob) and blob != digest:
            logger.warning(
                "safe_encoders: %s in the Hub cache does not hash to the sha256 the Hub reported (%s); not pinned.",
                path,
                blob,
            )
            return None
        files[_relative(path, commit)] = digest
    store = TrustStore()
    for entry in store.entries(source.kind):
        pinned = entry.source
        if entry.trusted_by != "registry" or str(pinned.get("repo_id", "")).lower() != repo_id.lower():
            continue
        if pinned.get("commit") == commit and pinned.get("files") == files:
            return None
        logger.warning(
            "safe_encoders: %s is pinned at commit %s (files %s) but was read at commit %s (files %s); not trusted "
            "automatically. If you accept this version, run `safe-encoders trust %s`.",
            repo_id,
            pinned.get("commit"),
            pinned.get("files"),
            commit,
            files,
            repo_id,
        )
        return None
    entry = entry_from_source(source, "registry", {"repo_id": repo_id, "commit": commit, "files": files})
    store.add(entry)
    logger.info("safe_encoders: pinned %s@%s (%s encoder) in %s", repo_id, commit, source.kind, store.root)
    return entry


def _relative(path: Path, commit: str) -> str:
    parts = Path(path).parts
    if commit in parts:
        return "/".join(parts[parts.index(commit) + 1 :])
    return Path(path).name
