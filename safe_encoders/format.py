"""Our on-disk format: one safetensors file per encoder, with the published tensor names.

Tensor names are those of the official `CLIPModel` checkpoints (transformers 4 naming):
`text_model.*` + `text_projection.weight`, or `vision_model.*` + `visual_projection.weight`.
transformers 5 dropped the `text_model.` / `vision_model.` prefix inside `CLIPTextModel` /
`CLIPVisionModel`; `canonical_name` and `module_names` translate either way.

The header metadata (all strings, as safetensors requires):

- `format`: "pt" (what transformers expects)
- `safe_encoders.format_version`: "1"
- `safe_encoders.encoder`: "text" or "vision"
- `safe_encoders.config`: the encoder's transformers config as JSON
- `safe_encoders.base_model`: the model the encoder was fine-tuned from
- `safe_encoders.provenance`: JSON: {"kind": "converted"|"trained", ...; LoRA rank / alpha when trained}
- `safe_encoders.tensor_digests`: JSON {tensor name: sha256 of dtype, shape and bytes}
- `safe_encoders.digest`: sha256 over the sorted per-tensor digests, the file's identity
- `safe_encoders.library_version`: the version that wrote the file
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .atomic import atomic_write
from .errors import CorruptCheckpointError
from .registry import EncoderKind

FORMAT_VERSION = 1
_META = "safe_encoders."
PREFIX: dict[EncoderKind, str] = {"text": "text_model.", "vision": "vision_model."}
PROJECTION: dict[EncoderKind, str] = {"text": "text_projection.weight", "vision": "visual_projection.weight"}
# Tensors that are derived, not learned, and differ between transformers versions.
_IGNORED_SUFFIXES = ("position_ids",)
# Stored in an encoder's config by a swap / load, so it is saved with `save_pretrained` and survives a reload.
RECORD_KEY = "safe_encoders"
# Config entries that describe a saved model rather than the encoder's architecture; never written to our files.
CONFIG_NOISE = ("_name_or_path", "architectures", "transformers_version", "torch_dtype", "dtype", RECORD_KEY)


def encoder_file_name(kind: EncoderKind) -> str:
    """The name of our file for a `kind` encoder inside a folder: `text_encoder.safetensors` / `vision_...`."""
    return f"{kind}_encoder.safetensors"


def is_published_name(name: str, kind: EncoderKind) -> bool:
    """Whether `name` is a published tensor name of a `kind` encoder (`text_model.*` or the projection)."""
    return name.startswith(PREFIX[kind]) or name == PROJECTION[kind]


def canonical_name(module_key: str, kind: EncoderKind) -> str:
    """The published name of a state-dict key of a CLIP text / vision module of any transformers version."""
    if is_published_name(module_key, kind):
        return module_key
    return PREFIX[kind] + module_key


def is_ignored(name: str) -> bool:
    return name.endswith(_IGNORED_SUFFIXES)


def module_names(state_keys: Iterable[str], kind: EncoderKind) -> dict[str, str]:
    """Map published name -> key in the given module state dict (ignored buffers left out)."""
    return {canonical_name(key, kind): key for key in state_keys if not is_ignored(key)}


def tensor_digest(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes (device and strides do not matter)."""
    tensor = tensor.detach().to("cpu").contiguous()
    digest = hashlib.sha256(f"{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    if tensor.numel():
        digest.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def combined_digest(tensor_digests: Mapping[str, str]) -> str:
    """The file identity: sha256 over the sorted `name:digest` lines."""
    lines = "".join(f"{name}:{tensor_digests[name]}\n" for name in sorted(tensor_digests))
    return "sha256:" + hashlib.sha256(lines.encode()).hexdigest()


@dataclass(frozen=True)
class EncoderFileInfo:
    """What the header of one of our files says."""

    path: Path
    kind: EncoderKind
    config: dict[str, Any]
    base_model: str | None
    provenance: dict[str, Any]
    tensor_digests: dict[str, str]
    digest: str
    format_version: int
    library_version: str


def write_encoder_file(
    path: str | os.PathLike,
    tensors: Mapping[str, torch.Tensor],
    *,
    kind: EncoderKind,
    config: Mapping[str, Any],
    base_model: str | None,
    provenance: Mapping[str, Any],
) -> tuple[Path, str]:
    """Write `tensors` (published names) atomically: a crash leaves the old file or none, never half of one.
    Returns the path written and the file's digest (`safe_encoders.digest`), computed without reading it back."""
    from . import __version__

    path = Path(path)
    unknown = [name for name in tensors if not is_published_name(name, kind)]
    if unknown:
        raise ValueError(f"write_encoder_file: tensors {unknown[:3]} are not {kind}-encoder names ({PREFIX[kind]}*).")
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    digests = {name: tensor_digest(t) for name, t in tensors.items()}
    digest = combined_digest(digests)
    metadata = {
        "format": "pt",
        _META + "format_version": str(FORMAT_VERSION),
        _META + "encoder": kind,
        _META + "config": json.dumps(dict(config), sort_keys=True, default=str),
        _META + "base_model": base_model or "",
        _META + "provenance": json.dumps(dict(provenance), sort_keys=True, default=str),
        _META + "tensor_digests": json.dumps(digests, sort_keys=True),
        _META + "digest": digest,
        _META + "library_version": __version__,
    }
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata)), digest


def read_safetensors_metadata(path: Path) -> dict[str, str]:
    """The string metadata of any safetensors file; CorruptCheckpointError if it is not one."""
    try:
        with safe_open(path, framework="pt") as handle:
            return handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise _unreadable(path, error) from error


def read_safetensors_header(path: Path) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """The string metadata and the tensor shapes of any safetensors file, from one opening of it;
    CorruptCheckpointError if it is not one."""
    try:
        with safe_open(path, framework="pt") as handle:
            return handle.metadata() or {}, safetensors_shapes(handle)
    except (SafetensorError, OSError, ValueError) as error:
        raise _unreadable(path, error) from error


def safetensors_shapes(handle: Any) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} of an open safetensors file (no tensor is read)."""
    return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}  # noqa: SIM118


def _unreadable(path: Path, error: Exception) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"{path} is not a readable safetensors file ({error}). Delete it and download or export it again."
    )


def is_encoder_metadata(metadata: Mapping[str, str]) -> bool:
    """True when safetensors `metadata` is the header of a file written by safe_encoders."""
    return _META + "format_version" in metadata


def is_encoder_file(path: str | os.PathLike) -> bool:
    """True when `path` is a safetensors file written by safe_encoders."""
    path = Path(path)
    if not (path.is_file() and path.suffix == ".safetensors"):
        return False
    try:
        return is_encoder_metadata(read_safetensors_metadata(path))
    except CorruptCheckpointError:
        return False


def read_encoder_header(path: str | os.PathLike) -> EncoderFileInfo:
    """Parse and check our metadata header (no tensor is read)."""
    path = Path(path)
    return encoder_header_from_metadata(path, read_safetensors_metadata(path))


def encoder_header_from_metadata(path: Path, meta: Mapping[str, str]) -> EncoderFileInfo:
    """Parse and check our metadata header, already read from the file at `path`."""
    if not is_encoder_metadata(meta):
        raise CorruptCheckpointError(
            f"{path} is a safetensors file but not a safe-encoders encoder file (no safe_encoders metadata). "
            "Pass the transformers folder that holds it (with its config.json), or convert it with "
            "safe_encoders.convert_checkpoint."
        )
    raw_version = meta[_META + "format_version"]
    if not raw_version.strip().isdigit():
        raise CorruptCheckpointError(
            f"{path}: damaged safe_encoders metadata: format_version {raw_version!r} is not a number. "
            "Download or export the file again."
        )
    try:
        version = int(raw_version)
        if version > FORMAT_VERSION:
            raise CorruptCheckpointError(
                f"{path} uses safe-encoders format version {version}; this library reads up to "
                f"{FORMAT_VERSION}. Upgrade safe-encoders."
            )
        kind = meta[_META + "encoder"]
        if kind not in PREFIX:
            raise CorruptCheckpointError(f"{path}: unknown encoder kind {kind!r} in metadata.")
        digests = json.loads(meta[_META + "tensor_digests"])
        info = EncoderFileInfo(
            path=path,
            kind=kind,  # type: ignore[arg-type]
            config=json.loads(meta[_META + "config"]),
            base_model=meta.get(_META + "base_model") or None,
            provenance=json.loads(meta.get(_META + "provenance", "{}")),
            tensor_digests=digests,
            digest=meta[_META + "digest"],
            format_version=version,
            library_version=meta.get(_META + "library_version", "unknown"),
        )
    except (KeyError, json.JSONDecodeError) as error:
        raise CorruptCheckpointError(
            f"{path}: damaged safe_encoders metadata ({error!r}). Download or export the file again."
        ) from error
    for field_name, value in (("config", info.config), ("provenance", info.provenance), ("tensor_digests", digests)):
        if not isinstance(value, dict):
            raise CorruptCheckpointError(
                f"{path}: damaged safe_encoders metadata: {field_name} is a JSON {type(value).__name__}, not an "
                "object. Download or export the file again."
            )
    if combined_digest(info.tensor_digests) != info.digest:
        raise CorruptCheckpointError(f"{path}: the tensor digest list does not match the file digest.")
    return info
