"""A transformers CLIP checkpoint: its config.json and the encoder's tensors in its weight files (one
safetensors or pickle file, or shards named by an index)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..errors import ArchitectureMismatchError, CheckpointNotFoundError, CorruptCheckpointError
from ..format import CONFIG_NOISE, canonical_name, is_ignored, is_published_name, safetensors_shapes
from ..registry import EncoderKind
from .encoder_source import EncoderSource
from .pickles import load_pickle_weights

# Weight files of a transformers folder, in order of preference.
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def transformers_source(
    fetch: Callable[[str], Path | None],
    kind: EncoderKind,
    *,
    label: str,
    identity: str,
    weight_files: tuple[str, ...] = _WEIGHT_FILES,
) -> EncoderSource:
    """A transformers checkpoint: config.json and the first of `weight_files` found (default: the
    standard names, in order of preference; a caller that was given one weight file passes its name)."""
    config_path = fetch("config.json")
    assert config_path is not None  # callers check
    raw = read_json_object(config_path)
    config, belongs = encoder_config_from_dict(raw, kind, label=label)

    locations: dict[str, tuple[Path, str]] = {}
    pickled: dict[Path, dict[str, torch.Tensor]] = {}
    header_shapes: dict[Path, dict[str, tuple[int, ...]]] = {}  # safetensors headers, each read once
    for weights_name in weight_files:
        weights = fetch(weights_name)
        if weights is None:
            continue
        if weights_name.endswith(".index.json"):
            weight_map = read_json_object(weights).get("weight_map")
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise CorruptCheckpointError(
                    f"{weights}: an index file needs a 'weight_map' object {{tensor name: shard file name}}; "
                    f"this one has {type(weight_map).__name__ if weight_map is not None else 'none'}. "
                    "Download the checkpoint again."
                )
            wanted = {key: shard for key, shard in weight_map.items() if belongs(key)}
            shard_paths = {}
            for shard in sorted(set(wanted.values())):
                _check_shard_name(weights, shard)
                shard_path = fetch(shard)
                if shard_path is None:
                    raise CorruptCheckpointError(f"{label}: shard {shard} named in {weights_name} is missing.")
                shard_paths[shard] = shard_path
            locations = {canonical_name(key, kind): (shard_paths[shard], key) for key, shard in wanted.items()}
        else:
            if weights.suffix != ".safetensors":
                pickled[weights] = load_pickle_weights(weights)
            else:
                header_shapes[weights] = _safetensors_shapes(weights)
            keys = list(pickled[weights]) if weights in pickled else list(header_shapes[weights])
            locations = {canonical_name(key, kind): (weights, key) for key in keys if belongs(key)}
        for path in {path for path, _ in locations.values() if path.suffix != ".safetensors"} - set(pickled):
            pickled[path] = load_pickle_weights(path)  # memory-mapped: only what is used gets paged in
        break
    else:
        raise CheckpointNotFoundError(
            f"{label} has a config.json but no weights ({', '.join(weight_files)}), "
            "or they are not in the local cache while offline."
        )
    if not locations:
        raise CorruptCheckpointError(f"{label}: the weights hold no {kind}-encoder tensors.")
    for path in {path for path, _ in locations.values()} - set(pickled) - set(header_shapes):
        header_shapes[path] = _safetensors_shapes(path)  # the shards of a sharded checkpoint
    shapes = {
        name: tuple(pickled[path][key].shape) if path in pickled else header_shapes[path][key]
        for name, (path, key) in locations.items()
    }
    return EncoderSource(
        kind=kind,
        config=config,
        shapes=shapes,
        label=label,
        identity=identity,
        base_model=raw.get("_name_or_path") or None,
        provenance={"kind": "transformers"},
        _locations=locations,
        _pickled=pickled,
    )


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object; CorruptCheckpointError naming the file otherwise."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptCheckpointError(
            f"{path} is not valid JSON ({error}); the file is truncated or damaged. Download it again."
        ) from None
    if not isinstance(value, dict):
        raise CorruptCheckpointError(
            f"{path} holds a JSON {type(value).__name__}, not an object; the file is damaged. Download it again."
        )
    return value


def _check_shard_name(index: Path, shard: str) -> None:
    """A shard named in an index must be a file beside it: no absolute path, no '..', no backslash."""
    parts = shard.replace("\\", "/").split("/")
    if not shard or shard.startswith(("/", "\\")) or ".." in parts or os.path.isabs(shard) or "\\" in shard:
        raise CorruptCheckpointError(
            f"{index} names a shard {shard!r} outside its folder; refusing to open it. "
            "An index may only name files of its own checkpoint."
        )


def encoder_config_from_dict(
    raw: Mapping[str, Any], kind: EncoderKind, *, label: str = "config"
) -> tuple[dict[str, Any], Callable[[str], bool]]:
    """The complete `kind` sub-config of a CLIP config dict, and a predicate selecting its tensors."""
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    model_type = raw.get("model_type")
    if model_type == "clip":
        full = CLIPConfig.from_dict(dict(raw))
        sub = (full.text_config if kind == "text" else full.vision_config).to_dict()
        # In CLIPModel the heads project to the top-level projection_dim.
        sub["projection_dim"] = full.projection_dim

        def belongs(key: str) -> bool:
            return is_published_name(key, kind) and not is_ignored(key)

    elif model_type in ("clip_text_model", "clip_vision_model"):
        own = "text" if model_type == "clip_text_model" else "vision"
        if own != kind:
            raise ArchitectureMismatchError(
                f"{label} is a CLIP {own} encoder (model_type {model_type}); a {kind} encoder was asked for."
            )
        sub = (CLIPTextConfig if own == "text" else CLIPVisionConfig).from_dict(dict(raw)).to_dict()

        def belongs(key: str) -> bool:
            return not is_ignored(key) and key != "logit_scale"

    else:
        raise ArchitectureMismatchError(
            f"{label} has model_type {model_type!r}; safe_encoders reads CLIP checkpoints "
            "(model_type clip, clip_text_model or clip_vision_model)."
        )
    for key in CONFIG_NOISE:
        sub.pop(key, None)
    sub["model_type"] = "clip_text_model" if kind == "text" else "clip_vision_model"
    return sub, belongs


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} of a safetensors weight file, from one opening of it."""
    with safe_open(path, framework="pt") as handle:
        return safetensors_shapes(handle)
