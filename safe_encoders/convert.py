"""Writing encoders in our format: from a live module (`export_encoder`) or a checkpoint (`convert_checkpoint`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from .atomic import atomic_folder
from .errors import ArchitectureMismatchError, UnsupportedModelError
from .format import CONFIG_NOISE, encoder_file_name, module_names, write_encoder_file
from .registry import EncoderKind
from .sources import resolve_source
from .swap import encoder_kind, installed_record

ENCODER_KINDS: tuple[EncoderKind, ...] = ("text", "vision")


def export_encoder(
    encoder: nn.Module,
    path: str | os.PathLike,
    *,
    base_model: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write a CLIP text or vision model (with or without projection) as one of our files.

    Args:
        encoder: a plain transformers `CLIPTextModel`, `CLIPVisionModel` or `...WithProjection`.
            A peft model must be merged first (`merge_and_unload()`).
        path: the `.safetensors` file to write, or a folder (then `text_encoder.safetensors` /
            `vision_encoder.safetensors` inside it). Written atomically.
        base_model: the model the encoder was fine-tuned from (Hub id); defaults to the one recorded
            when the encoder was loaded by safe_encoders, else the config's `_name_or_path`.
        metadata: provenance facts, e.g. {"provenance": "trained", "lora_rank": 16, "lora_alpha": 1}.
            Any JSON-serialisable value is kept.

    Returns the path written.
    """
    return export_encoder_with_digest(encoder, path, base_model=base_model, metadata=metadata)[0]


def export_encoder_with_digest(
    encoder: nn.Module,
    path: str | os.PathLike,
    *,
    base_model: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> tuple[Path, str]:
    """`export_encoder`, also returning the digest of the file written (without reading it back)."""
    kind = encoder_kind(encoder)
    if kind is None:
        if hasattr(encoder, "merge_and_unload"):
            raise UnsupportedModelError(
                "export_encoder got a peft model: merge the LoRA factors first, e.g. "
                "export_encoder(model.merge_and_unload(), path)."
            )
        raise UnsupportedModelError(
            f"export_encoder takes a transformers CLIP text/vision model, not {type(encoder).__name__}."
        )
    state = encoder.state_dict()
    if any(t.device.type == "meta" for t in state.values()):
        raise UnsupportedModelError("export_encoder: the encoder has weights on the meta device (offloaded?).")
    tensors = {name: state[key] for name, key in module_names(state.keys(), kind).items()}
    config = {k: v for k, v in encoder.config.to_dict().items() if k not in CONFIG_NOISE}
    record = installed_record(encoder) or {}
    extra = dict(metadata or {})
    provenance = {"kind": extra.pop("provenance", "exported"), **extra}
    if record:
        provenance.setdefault("swapped_from", record.get("checkpoint"))
    base = base_model or record.get("base_model") or getattr(encoder.config, "_name_or_path", None) or None
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / encoder_file_name(kind)
    elif path.suffix != ".safetensors":
        raise ValueError(f"export_encoder writes .safetensors files; got {path}. Use a .safetensors name or a folder.")
    return write_encoder_file(path, tensors, kind=kind, config=config, base_model=base, provenance=provenance)


def convert_checkpoint(source: Any, out_dir: str | os.PathLike, **hub_kwargs: Any) -> dict[str, Path]:
    """Split an official `CLIPModel` checkpoint (Hub id, registry name or folder) into our two files.

    Reads each encoder's tensors with safetensors' lazy reader (never instantiating the
    `CLIPModel`) and writes `text_encoder.safetensors` and `vision_encoder.safetensors` into
    `out_dir`, written whole (`atomic_folder`). A text-only or vision-only checkpoint yields one file.
    Returns {kind: path}.
    """
    out_dir = Path(out_dir)
    sources = {}
    for kind in ENCODER_KINDS:
        try:
            sources[kind] = resolve_source(source, kind, **hub_kwargs)
        except ArchitectureMismatchError:
            continue  # e.g. asking a CLIPTextModel checkpoint for its vision encoder
    if not sources:
        raise ArchitectureMismatchError(f"{source} holds neither a CLIP text nor a CLIP vision encoder.")
    with atomic_folder(out_dir) as tmp:  # written whole: a failure leaves no folder with one encoder only
        for kind, src in sources.items():
            provenance = {"kind": "converted", "source": src.label, "source_identity": src.identity}
            write_encoder_file(
                tmp / encoder_file_name(kind),
                src.read(src.shapes),
                kind=kind,
                config=src.config,
                base_model=src.base_model,
                provenance=provenance,
            )
    return {kind: out_dir / encoder_file_name(kind) for kind in sources}
