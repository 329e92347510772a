"""Reading the authors' HySAC release: `hysac_model.pth`, a state dict of a peft-wrapped CLIP.

What the file is believed to hold (the real key names are unverified here): the state dict of a
module whose text tower (`textual`) and vision tower (`visual`) are peft-wrapped
`CLIP...WithProjection` models, e.g.
`textual.base_model.model.text_model.encoder.layers.0.self_attn.k_proj.base_layer.weight` and
`...k_proj.lora_A.default.weight`, plus the scalars `curv`, `textual_alpha`, `visual_alpha` and
`logit_scale` (log space, as in MERU) and image normalisation buffers.

The reader is tolerant about wrappers and strict about content:

- Any leading wrapper segments are skipped (`module.`, `model.`, `base_model.`, `_orig_mod.`, ...);
  a tower is recognised by `text_model.` / `vision_model.` / the projection names, or by a tower
  prefix (`textual`, `visual`, `text_encoder`, `vision_encoder`, ...) for towers saved without
  those prefixes. peft's `base_layer.` is dropped; `lora_A` / `lora_B` (`lora_embedding_A/B`)
  become LoRA factors of their module.
- Keys that match nothing are reported in one warning; the image normalisation buffers
  (`pixel_mean`, `pixel_std`) are ignored (our image processor normalises).
- Missing scalars, half LoRA pairs, LoRA factors of modules the tower does not have, shape
  mismatches and towers with no tensor at all raise `CorruptCheckpointError` /
  `ArchitectureMismatchError`.

The LoRA factors are merged by peft: a `LoraConfig` is built from the tensors (target modules =
the modules that carry factors, rank = `lora_A.shape[0]`, `rank_pattern` when ranks differ) and
the caller's `lora_alpha`, the factors are loaded, then `merge_and_unload()` returns plain towers.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ArchitectureMismatchError, CorruptCheckpointError, UnsupportedModelError
from ..format import PREFIX
from ..registry import EncoderKind

logger = logging.getLogger("safe_encoders")

_ANCHORS: dict[str, EncoderKind] = {
    "text_model": "text",
    "text_projection": "text",
    "vision_model": "vision",
    "visual_projection": "vision",
}
_TOWERS: dict[str, EncoderKind] = {
    "textual": "text",
    "text": "text",
    "text_encoder": "text",
    "text_tower": "text",
    "visual": "vision",
    "vision": "vision",
    "vision_encoder": "vision",
    "image_encoder": "vision",
    "visual_encoder": "vision",
    "vision_tower": "vision",
}
_WRAPPERS = frozenset({"module", "model", "base_model", "_orig_mod", "clip", "hysac"})
# name in the file -> HySAC parameter (all in log space)
SCALAR_ALIASES: dict[str, str] = {
    "curv": "log_curvature",
    "log_curv": "log_curvature",
    "curvature": "log_curvature",
    "log_curvature": "log_curvature",
    "textual_alpha": "log_text_alpha",
    "text_alpha": "log_text_alpha",
    "log_text_alpha": "log_text_alpha",
    "visual_alpha": "log_image_alpha",
    "vision_alpha": "log_image_alpha",
    "image_alpha": "log_image_alpha",
    "log_image_alpha": "log_image_alpha",
    "logit_scale": "logit_scale",
}
REQUIRED_SCALARS = ("log_curvature", "log_text_alpha", "log_image_alpha")
_IGNORED_LEAVES = frozenset({"pixel_mean", "pixel_std", "position_ids"})
_LORA_PARTS = {"lora_A": "A", "lora_B": "B", "lora_embedding_A": "A", "lora_embedding_B": "B"}


@dataclass
class ReleaseContents:
    """The keys of a release state dict, sorted by what they are."""

    base: dict[EncoderKind, dict[str, torch.Tensor]] = field(default_factory=lambda: {"text": {}, "vision": {}})
    # kind -> module path (published naming, e.g. text_model.encoder.layers.0.self_attn.k_proj) -> {"A", "B"}
    lora: dict[EncoderKind, dict[str, dict[str, torch.Tensor]]] = field(
        default_factory=lambda: {"text": {}, "vision": {}}
    )
    scalars: dict[str, torch.Tensor] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    adapters: set[str] = field(default_factory=set)
    sources: dict[str, str] = field(default_factory=dict)  # our name -> key in the file


def parse_release_state(state: Mapping[str, torch.Tensor]) -> ReleaseContents:
    """Sort the keys of a release state dict into base tensors, LoRA factors, scalars and the rest."""
    contents = ReleaseContents()
    for key, tensor in state.items():
        parts = key.split(".")
        i, tower = 0, None
        while i < len(parts) - 1 and parts[i] not in _ANCHORS and (parts[i] in _WRAPPERS or parts[i] in _TOWERS):
            tower = _TOWERS.get(parts[i], tower)
            i += 1
        rest = parts[i:]
        if rest[-1] in _IGNORED_LEAVES:
            contents.ignored.append(key)
            continue
        if len(rest) == 1 and tower is None and rest[0] in SCALAR_ALIASES:
            name = SCALAR_ALIASES[rest[0]]
            if name in contents.scalars:
                raise CorruptCheckpointError(f"Two entries give {name}: {contents.sources[name]!r} and {key!r}.")
            contents.scalars[name], contents.sources[name] = tensor, key
            continue
        kind = _ANCHORS.get(rest[0])
        if kind is None and tower is not None:
            kind, rest = tower, PREFIX[tower].rstrip(".").split(".") + rest
        if kind is None or (tower is not None and tower != kind):
            contents.unmatched.append(key)
            continue
        rest = [part for part in rest if part != "base_layer"]
        lora_at = next((j for j, part in enumerate(rest) if part in _LORA_PARTS), None)
        if "lora_magnitude_vector" in rest:
            raise UnsupportedModelError(f"{key}: DoRA adapters (lora_magnitude_vector) are not supported.")
        if lora_at is None:
            if any(part.startswith("lora_") for part in rest):
                contents.unmatched.append(key)
                continue
            name = ".".join(rest)
            contents.base[kind][name], contents.sources[name] = tensor, key
            continue
        module = ".".join(rest[:lora_at])
        after = [part for part in rest[lora_at + 1 :] if part != "weight"]
        if len(after) > 1:
            contents.unmatched.append(key)
            continue
        contents.adapters.add(after[0] if after else "")
        factor = _LORA_PARTS[rest[lora_at]]
        contents.lora[kind].setdefault(module, {})[factor] = tensor
        contents.sources[f"{module}.lora_{factor}"] = key
    return contents


def check_release(contents: ReleaseContents, label: str) -> None:
    """Raise on what is missing or inconsistent; warn about keys nobody uses."""
    missing = [name for name in REQUIRED_SCALARS if name not in contents.scalars]
    if missing:
        aliases = {name: sorted(k for k, v in SCALAR_ALIASES.items() if v == name) for name in missing}
        raise CorruptCheckpointError(
            f"{label} lacks {', '.join(missing)} (looked for keys named {aliases}). Is it a HySAC checkpoint?"
        )
    for name, value in contents.scalars.items():
        if value.numel() != 1 or not value.is_floating_point():
            raise CorruptCheckpointError(f"{label}: {contents.sources[name]} should be one float, got {value.shape}.")
        if not bool(torch.isfinite(value).all()):
            raise CorruptCheckpointError(
                f"{label}: {contents.sources[name]} is {value.item()}, not a finite number; the file is damaged."
            )
    for kind, modules in contents.lora.items():
        half = sorted(module for module, factors in modules.items() if set(factors) != {"A", "B"})
        if half:
            raise CorruptCheckpointError(f"{label}: LoRA factors without their pair for {kind} modules {half[:3]}.")
    if len(contents.adapters) > 1:
        raise CorruptCheckpointError(
            f"{label} holds several LoRA adapters ({sorted(contents.adapters)}); expected one."
        )
    for kind in ("text", "vision"):
        if not contents.base[kind] and not contents.lora[kind]:
            raise CorruptCheckpointError(
                f"{label}: found no {kind}-tower tensors. Keys that matched nothing: "
                f"{contents.unmatched[:5]} (of {len(contents.unmatched)})."
            )
    if contents.unmatched:
        logger.warning(
            "%s: %d key(s) match nothing in HySAC and are ignored: %s%s",
            label,
            len(contents.unmatched),
            ", ".join(contents.unmatched[:10]),
            " ..." if len(contents.unmatched) > 10 else "",
        )


def build_tower(
    kind: EncoderKind,
    config: Mapping[str, Any],
    contents: ReleaseContents,
    *,
    base_weights: Any,
    lora_alpha: float,
    label: str,
) -> nn.Module:
    """The `kind` tower (`CLIP...WithProjection`): base weights from the file, else from
    `base_weights(names) -> {published name: tensor}`, then the LoRA factors merged by peft."""
    from ..loading import empty_encoder, fill_encoder

    tower, names = empty_encoder(kind, dict(config), True)
    given = contents.base[kind]
    unknown = sorted(set(given) - set(names))
    if unknown:
        contents.unmatched.extend(contents.sources[name] for name in unknown)
        logger.warning("%s: %d %s tensor(s) are not in the base tower and are ignored: %s", label,
                       len(unknown), kind, ", ".join(unknown[:10]))  # fmt: skip
    needed = [name for name in names if name not in given]
    tensors = {name: given[name] for name in names if name in given}
    if needed:
        logger.info("%s: %d of %d %s tensors come from the base model.", label, len(needed), len(names), kind)
        tensors.update(base_weights(needed))
    shapes = {key: tuple(value.shape) for key, value in tower.state_dict().items()}
    wrong = [
        f"{name}: {tuple(tensors[name].shape)} vs {shapes[key]}"
        for name, key in names.items()
        if tuple(tensors[name].shape) != shapes[key]
    ]
    if wrong:
        raise ArchitectureMismatchError(
            f"{label}: the {kind} tensors do not fit the base model's architecture ({'; '.join(wrong[:3])}). "
            "Pass the base_model the checkpoint was trained from."
        )
    fill_encoder(tower, names, tensors)
    if contents.lora[kind]:
        tower = _merge_lora(tower, kind, contents.lora[kind], names, lora_alpha=lora_alpha, label=label)
    return tower.eval()


def _merge_lora(
    tower: nn.Module,
    kind: EncoderKind,
    factors: dict[str, dict[str, torch.Tensor]],
    names: dict[str, str],
    *,
    lora_alpha: float,
    label: str,
) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    targets: dict[str, str] = {}  # module path in this transformers version -> published module path
    for module in factors:
        key = names.get(module + ".weight")
        if key is None:
            raise CorruptCheckpointError(
                f"{label}: LoRA factors for {module!r}, which the {kind} tower does not have (or has no weight)."
            )
        targets[key.removesuffix(".weight")] = module
    ranks = {target: int(factors[module]["A"].shape[0]) for target, module in targets.items()}
    rank = Counter(ranks.values()).most_common(1)[0][0]
    config = LoraConfig(
        r=rank,
        lora_alpha=lora_alpha,
        lora_dropout=0.0,
        bias="none",
        target_modules=sorted(targets),
        rank_pattern={target: r for target, r in ranks.items() if r != rank},
    )
    peft_model = get_peft_model(tower, config)
    inner = peft_model.get_base_model()
    with torch.no_grad():
        for target, module in targets.items():
            layer = inner.get_submodule(target)
            for factor in ("A", "B"):
                slot = _lora_slot(layer, factor)
                value = factors[module][factor]
                if tuple(slot.shape) != tuple(value.shape):
                    raise ArchitectureMismatchError(
                        f"{label}: LoRA {factor} of {module} has shape {tuple(value.shape)}, the layer expects "
                        f"{tuple(slot.shape)}."
                    )
                slot.copy_(value.to(slot.dtype))
    merged = peft_model.merge_and_unload()
    logger.info("%s: merged LoRA (rank %s, alpha %s) into %d %s modules.", label, rank, lora_alpha, len(targets), kind)
    return merged


def _lora_slot(layer: nn.Module, factor: str) -> torch.Tensor:
    if hasattr(layer, "lora_embedding_A") and len(getattr(layer, "lora_embedding_A", {})):
        return getattr(layer, f"lora_embedding_{factor}")["default"]
    return getattr(layer, f"lora_{factor}")["default"].weight


def read_bounds_file(path: Path | None) -> Any:
    """The bounds JSON as `HySACBounds`, or None when there is no file."""
    from .bounds import HySACBounds

    if path is None:
        return None
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CorruptCheckpointError(f"{path} is not a readable JSON file ({error}).") from error
    return HySACBounds.from_dict(raw, label=str(path))
