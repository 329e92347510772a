"""Local sources: one of our files, a transformers folder, or one weight file inside such a folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import ArchitectureMismatchError, CheckpointNotFoundError, CorruptCheckpointError
from ..format import (
    encoder_file_name,
    encoder_header_from_metadata,
    is_encoder_metadata,
    read_encoder_header,
    read_safetensors_header,
)
from ..registry import EncoderKind
from .encoder_source import EncoderSource
from .pickles import PICKLE_SUFFIXES
from .transformers_checkpoint import transformers_source


def local_source(path: Path, kind: EncoderKind) -> EncoderSource:
    """An existing local path: a folder (ours or transformers), one of our files, or a weight file of a folder."""
    if path.is_dir():
        ours = path / encoder_file_name(kind)
        if ours.is_file():
            return encoder_file_source(ours, kind)
        if (path / "config.json").is_file():
            return transformers_source(_local_fetch(path), kind, label=str(path), identity=_local_identity(path))
        raise CheckpointNotFoundError(
            f"Folder {path} holds neither {ours.name} (safe-encoders format) nor a transformers config.json. "
            "Pass the folder of a CLIP checkpoint, a file written by export_encoder, or a Hub id."
        )
    if path.suffix == ".safetensors":
        try:
            header = read_safetensors_header(path)
        except CorruptCheckpointError:
            header = None
        if header is not None and is_encoder_metadata(header[0]):
            return encoder_file_source(path, kind, header)
        if (path.parent / "config.json").is_file():
            return _weight_file_source(path, kind)
        read_encoder_header(path)  # raises with the precise reason (not ours / not safetensors)
    if path.suffix in PICKLE_SUFFIXES:
        if (path.parent / "config.json").is_file():
            return _weight_file_source(path, kind)
        raise CheckpointNotFoundError(
            f"{path} is a pickle weight file with no config.json beside it, so its architecture is unknown. "
            "Pass the transformers folder that holds it (config.json + weights), ideally with model.safetensors."
        )
    raise CheckpointNotFoundError(
        f"{path} is not a .safetensors file or a checkpoint folder. Pass a folder, a .safetensors file or a Hub id."
    )


def _weight_file_source(path: Path, kind: EncoderKind) -> EncoderSource:
    """One weight file (safetensors or pickle) of a transformers folder, read with the config.json beside it."""
    return transformers_source(
        _local_fetch(path.parent),
        kind,
        label=str(path),
        identity=_local_identity(path.parent),
        weight_files=(path.name,),
    )


def _local_fetch(folder: Path) -> Callable[[str], Path | None]:
    def fetch(filename: str) -> Path | None:
        candidate = folder / filename
        return candidate if candidate.is_file() else None

    return fetch


def _local_identity(folder: Path) -> str:
    stamps = [
        f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
        for p in sorted(folder.iterdir())
        if p.is_file() and (p.suffix in (".safetensors", ".json") or p.suffix in PICKLE_SUFFIXES)
    ]
    return f"dir:{folder.resolve()}|" + "|".join(stamps)


def encoder_file_source(
    path: Path, kind: EncoderKind, header: tuple[dict[str, str], dict[str, tuple[int, ...]]] | None = None
) -> EncoderSource:
    """One of our files; `header` is its (metadata, shapes) when already read."""
    metadata, shapes = header if header is not None else read_safetensors_header(path)
    info = encoder_header_from_metadata(path, metadata)
    if info.kind != kind:
        raise ArchitectureMismatchError(
            f"{path} holds a {info.kind} encoder, but a {kind} encoder was asked for. "
            f"Use the {encoder_file_name(kind)} file written beside it."
        )
    missing = set(shapes) ^ set(info.tensor_digests)
    if missing:
        raise CorruptCheckpointError(f"{path}: tensors and digest list disagree on {sorted(missing)[:5]}.")
    return EncoderSource(
        kind=kind,
        config=info.config,
        shapes=shapes,
        label=str(path),
        identity=info.digest,
        base_model=info.base_model,
        provenance={**info.provenance, "digest": info.digest, "format_version": info.format_version},
        expected_digests=info.tensor_digests,
        _locations={name: (path, name) for name in shapes},
    )
