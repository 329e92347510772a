"""`verify_folder`: the verdict on a saved diffusers pipeline or LLaVA folder, without building the model.

What a platform runs before it serves a pipeline it downloaded. Only files are read: `model_index.json`
/ `config.json` say which encoders there are and of what class; each encoder's safetensors files are
streamed (a slice at a time) and every tensor's digest, in the dtype it is stored in, is looked up in
the trust store. A file holds no code, so what it can change is the classes it names (only transformers'
CLIP encoder classes are accepted, no `auto_map` remote code), the config values the forward reads
(compared with the trusted checkpoint's), and the tensors (each must be the trusted one, and every
tensor the encoder needs must be there). A pickle weight file is never opened: it is reported.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointNotFoundError
from ..format import PROJECTION, canonical_name, is_ignored
from ..registry import EncoderKind
from ..sources.encoder_source import CHECK_THREADS
from ..sources.pickles import PICKLE_SUFFIXES
from ..sources.transformers_checkpoint import read_json_object
from ..streaming import Span, as_bytes, digest_start, safetensors_spans, stream_span
from .attestation import ENCODER_CLASSES
from .digests import dtype_name
from .store import TrustEntry, TrustStore
from .verify import EncoderVerdict, config_mismatch

_LAYER = re.compile(r"\.layers\.(\d+)\.")


@dataclass
class SavedEncoder:
    """One encoder of a saved folder: where its tensors are ({published name: Span}) and its config."""

    label: str
    kind: EncoderKind | None
    config: dict[str, Any] = field(default_factory=dict)
    class_name: str = ""
    tensors: dict[str, Span] = field(default_factory=dict)
    problem: str = ""  # why it cannot be verified at all (not CLIP, pickle weights, remote code, ...)


def verify_folder(path_or_id: str, **hub_kwargs: Any) -> list[tuple[str, EncoderVerdict]]:
    """(label, verdict) for each encoder of a saved diffusers pipeline, LLaVA model or CLIP encoder folder
    (a local path, or a Hub id already in the local cache). CheckpointNotFoundError when it is none of them."""
    root = _local_folder(path_or_id, hub_kwargs)
    return [(encoder.label, _verdict(encoder)) for encoder in saved_encoders(root)]


def _local_folder(path_or_id: str, hub_kwargs: dict[str, Any]) -> Path:
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    if path.exists() or not re.match(r"^[\w.-]+/[\w.-]+$", str(path_or_id)):
        raise CheckpointNotFoundError(f"{path_or_id} is not a folder, nor a Hub id 'org/name'.")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(path_or_id), local_files_only=True, **hub_kwargs))
    except (LocalEntryNotFoundError, OSError, ValueError) as error:
        raise CheckpointNotFoundError(
            f"{path_or_id} is not in the local Hugging Face cache ({error}); download it first "
            f"(`hf download {path_or_id}`) or pass its folder."
        ) from None


def saved_encoders(root: Path) -> list[SavedEncoder]:
    """The encoders of a saved folder, read from its index / config files."""
    if (root / "model_index.json").is_file():
        return _pipeline_encoders(root)
    if (root / "config.json").is_file():
        config = read_json_object(root / "config.json")
        model_type = config.get("model_type")
        if model_type in ("llava", "llava_next"):
            return [_llava_tower(root, config)]
        if "mm_vision_tower" in config:  # the original llava package (llava_llama, llava_mistral, ...)
            return [_original_llava_tower(config)]
        if model_type in ("clip_text_model", "clip_vision_model"):
            kind: EncoderKind = "text" if model_type == "clip_text_model" else "vision"
            return [_encoder_folder(root, root.name, kind, _architecture(config))]
    raise CheckpointNotFoundError(
        f"{root} is not a saved diffusers pipeline (model_index.json), LLaVA model or CLIP encoder (config.json)."
    )


def _pipeline_encoders(root: Path) -> list[SavedEncoder]:
    index = read_json_object(root / "model_index.json")
    encoders = []
    for name, value in index.items():
        if not name.startswith("text_encoder") or not isinstance(value, list) or value[:1] == [None]:
            continue
        library, class_name = [*value, None, None][:2]
        label = f"pipe.{name}"
        if library != "transformers" or class_name not in ENCODER_CLASSES or "Vision" in str(class_name):
            why = f"{library}.{class_name} is not a transformers CLIP text encoder; no Safe-CLIP exists for it"
            encoders.append(SavedEncoder(label, None, problem=why))
        else:
            encoders.append(_encoder_folder(root / name, label, "text", str(class_name)))
    if not encoders:
        raise CheckpointNotFoundError(f"{root}/model_index.json names no text encoder.")
    return encoders


def _architecture(config: dict[str, Any]) -> str:
    names = config.get("architectures") or [""]
    return str(names[0])


def _encoder_folder(folder: Path, label: str, kind: EncoderKind, class_name: str) -> SavedEncoder:
    if not (folder / "config.json").is_file():
        return SavedEncoder(label, kind, problem=f"{folder} has no config.json")
    raw = read_json_object(folder / "config.json")
    encoder = SavedEncoder(label, kind, class_name=class_name)
    if class_name not in ENCODER_CLASSES:
        encoder.problem = f"its class {class_name or '(none)'} is not a transformers CLIP encoder class"
        return encoder
    encoder.config = _complete(raw, kind)
    encoder.problem = _remote_code(raw) or _pickles(folder)
    if not encoder.problem:
        encoder.tensors, encoder.problem = _tensors(folder, lambda key: (canonical_name(key, kind), True))
    return encoder


def _llava_tower(root: Path, config: dict[str, Any]) -> SavedEncoder:
    vision = config.get("vision_config") or {}
    label = "model.vision_tower"
    if vision.get("model_type") != "clip_vision_model":
        return SavedEncoder(label, None, problem=f"its vision tower is a {vision.get('model_type')}, not CLIP")
    encoder = SavedEncoder(label, "vision", config=_complete(vision, "vision"), class_name="CLIPVisionModel")
    encoder.problem = _remote_code(config) or _pickles(root)
    if not encoder.problem:

        def belongs(key: str) -> tuple[str, bool]:
            # transformers 5 saves model.vision_tower.*, transformers 4 vision_tower.*
            head, found, rest = key.partition("vision_tower.")
            return canonical_name(rest, "vision"), bool(found) and head in ("", "model.")

        encoder.tensors, encoder.problem = _tensors(root, belongs)
    return encoder


def _original_llava_tower(config: dict[str, Any]) -> SavedEncoder:
    where = config.get("mm_vision_tower")
    why = (
        f"the original llava package loads its vision tower from mm_vision_tower ({where}) with delay_load, not "
        f"from this folder (tower tensors saved here are dropped on loading): verify {where} instead"
    )
    return SavedEncoder("model.vision_tower", None, problem=why)


def _complete(raw: dict[str, Any], kind: EncoderKind) -> dict[str, Any]:
    """A saved config lists only non-default values: the full one, as transformers would build it."""
    from transformers import CLIPTextConfig, CLIPVisionConfig

    cls = CLIPTextConfig if kind == "text" else CLIPVisionConfig
    return cls.from_dict({key: value for key, value in raw.items() if key != "model_type"}).to_dict()


def _remote_code(config: dict[str, Any]) -> str:
    return "its config names custom code (auto_map), which would run on loading" if config.get("auto_map") else ""


def _pickles(folder: Path) -> str:
    found = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    return f"it holds pickle weights ({found[0]}), which are never opened to verify them" if found else ""


def _tensors(folder: Path, belongs: Any) -> tuple[dict[str, Span], str]:
    """{published name: Span} over every safetensors file of the folder (all variants and shards:
    whichever one a loader picks must be trusted). A name in two files is kept for each (checked twice)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return {}, f"{folder} holds no safetensors weights"
    found: dict[str, Span] = {}
    for path in files:
        for key, span in safetensors_spans(path).items():
            name, mine = belongs(key)
            if mine and not is_ignored(name) and not key.endswith("logit_scale"):
                found[f"{name}@{path.name}" if name in found else name] = span
    return found, ""


def _verdict(encoder: SavedEncoder) -> EncoderVerdict:
    if encoder.problem or encoder.kind is None:
        return EncoderVerdict(False, reason=encoder.problem or "not a CLIP encoder")
    with ThreadPoolExecutor(max_workers=CHECK_THREADS) as pool:  # sha256 and file reads release the GIL
        digests = dict(zip(encoder.tensors, pool.map(_file_digest, encoder.tensors.values()), strict=True))
    entries = TrustStore().entries(encoder.kind)
    best: tuple[int, TrustEntry | None, str | None] = (len(digests) + 1, None, None)
    for entry in entries:
        differing = [name for name, (dtype, digest) in digests.items() if _expected(entry, name, dtype) != digest]
        missing = sorted(_required(entry, encoder) - {name.partition("@")[0] for name in digests})
        if not differing and not missing:
            mismatch = config_mismatch(entry, encoder.config)
            if mismatch:
                return EncoderVerdict(False, entry.checkpoint, None, "config", mismatch)
            return EncoderVerdict(True, entry.checkpoint, entry.trusted_by)
        count = len(differing) + len(missing)
        if count < best[0]:
            first = differing[0] if differing else f"{missing[0]} (missing)"
            best = (count, entry, first)
    _, closest, first = best
    if closest is None:
        why = "its weights are no trusted checkpoint" + ("" if entries else " (none is trusted)")
        return EncoderVerdict(False, reason=why, first_difference=next(iter(digests), None))
    why = f"its weights are no trusted checkpoint (closest: {closest.checkpoint})"
    return EncoderVerdict(False, None, None, first, why)


def _expected(entry: TrustEntry, name: str, dtype: str) -> str | None:
    return entry.tensors.get(dtype, {}).get(name.partition("@")[0])


def _required(entry: TrustEntry, encoder: SavedEncoder) -> set[str]:
    """The trusted tensors a module of this config and class reads (its depth may be shorter: SD 2)."""
    depth = int(encoder.config.get("num_hidden_layers", 0))
    projection = encoder.class_name.endswith("WithProjection")
    required = set()
    for name in entry.names():
        layer = _LAYER.search(name)
        if layer is not None and int(layer.group(1)) >= depth:
            continue
        if name == PROJECTION[encoder.kind] and not projection:  # type: ignore[index]
            continue
        required.add(name)
    return required


def _file_digest(span: Span) -> tuple[str, str]:
    digest = digest_start(span.dtype, span.shape)
    for chunk in stream_span(span):
        digest.update(as_bytes(chunk))
    return dtype_name(span.dtype), digest.hexdigest()


def describe(results: list[tuple[str, EncoderVerdict]]) -> str:
    """The per-encoder table `safe-encoders verify` prints."""
    rows = [("encoder", "checkpoint", "trusted by", "verdict")]
    for label, verdict in results:
        outcome = "verified" if verdict.verified else f"NOT verified: {verdict.reason}"
        if not verdict.verified and verdict.first_difference:
            outcome += f" (first difference: {verdict.first_difference})"
        rows.append((label, verdict.checkpoint or "-", verdict.trusted_by or "-", outcome))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join([*(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)), row[3]]) for row in rows]
    return "\n".join(lines)


def summary(results: list[tuple[str, EncoderVerdict]]) -> dict[str, Any]:
    """The `--json` form: {"verified": bool, "encoders": {label: verdict fields}}."""
    return {
        "verified": bool(results) and all(v.verified and v.trusted_by for _, v in results),
        "encoders": {label: verdict.as_dict() for label, verdict in results},
    }


def to_json(results: list[tuple[str, EncoderVerdict]]) -> str:
    return json.dumps(summary(results), indent=2, sort_keys=True)
