"""The published checkpoints, as plain data, and the lookup that matches them to an encoder.

An encoder is matched by its architecture fingerprint (widths, depth, heads, activation, image
geometry), read from the transformers config of the encoder that is about to be replaced.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ArchitectureMismatchError, CheckpointNotFoundError

EncoderKind = Literal["text", "vision"]


@dataclass(frozen=True)
class EncoderFingerprint:
    """The architecture facts that decide whether one CLIP encoder's weights fit another's modules."""

    kind: EncoderKind
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    hidden_act: str
    projection_dim: int | None = None
    # text only
    vocab_size: int | None = None
    max_positions: int | None = None
    # vision only
    image_size: int | None = None
    patch_size: int | None = None

    @classmethod
    def from_config(cls, config: Any, *, projection_dim: int | None = None) -> EncoderFingerprint:
        """Read a fingerprint from a `CLIPTextConfig` / `CLIPVisionConfig` (object or dict).

        `projection_dim` overrides the config's own value: in a `CLIPModel` the projection width is
        the top-level `projection_dim`, not the sub-config's.
        """
        if isinstance(config, Mapping):
            config = _complete_config(config)
        model_type = getattr(config, "model_type", "")
        is_vision = model_type == "clip_vision_model"

        def get(key: str) -> Any:
            return getattr(config, key)

        common = dict(
            hidden_size=int(get("hidden_size")),
            num_layers=int(get("num_hidden_layers")),
            num_heads=int(get("num_attention_heads")),
            intermediate_size=int(get("intermediate_size")),
            hidden_act=str(get("hidden_act")),
            projection_dim=projection_dim if projection_dim is not None else get("projection_dim"),
        )
        if is_vision:
            return cls(kind="vision", image_size=int(get("image_size")), patch_size=int(get("patch_size")), **common)
        return cls(
            kind="text",
            vocab_size=int(get("vocab_size")),
            max_positions=int(get("max_position_embeddings")),
            **common,
        )

    def describe(self) -> str:
        """A short human description, e.g. `text 768w x 12L, 12 heads, quick_gelu`."""
        text = f"{self.kind} {self.hidden_size}w x {self.num_layers}L, {self.num_heads} heads, {self.hidden_act}"
        if self.kind == "vision":
            text += f", {self.image_size}px/{self.patch_size}"
        return text

    def mismatches(self, target: EncoderFingerprint, *, target_has_projection: bool) -> list[str]:
        """Why weights of this (source) encoder cannot fill `target`; empty when they can.

        A source may be deeper than the target: the target then takes the first
        `target.num_layers` layers (SD 2 conditions on the penultimate layer of OpenCLIP ViT-H,
        which diffusers stores as a 23-layer encoder).
        """
        problems = []
        if self.kind != target.kind:
            return [f"encoder kind {self.kind} != {target.kind}"]
        fields_to_compare = ["hidden_size", "num_heads", "intermediate_size", "hidden_act"]
        fields_to_compare += ["vocab_size", "max_positions"] if self.kind == "text" else ["image_size", "patch_size"]
        if target_has_projection:
            fields_to_compare.append("projection_dim")
        for name in fields_to_compare:
            mine, theirs = getattr(self, name), getattr(target, name)
            if mine != theirs:
                problems.append(f"{name} {mine} != {theirs}")
        if self.num_layers < target.num_layers:
            problems.append(f"num_layers {self.num_layers} < {target.num_layers}")
        return problems


def _complete_config(raw: Mapping[str, Any]) -> Any:
    """A config dict as saved on the Hub lists only non-default values: fill in transformers' defaults."""
    from transformers import CLIPTextConfig, CLIPVisionConfig

    model_type = raw.get("model_type")
    if model_type is None:
        model_type = "clip_vision_model" if "image_size" in raw or "patch_size" in raw else "clip_text_model"
    if model_type not in ("clip_text_model", "clip_vision_model"):
        raise ValueError(
            f"Expected a CLIP text or vision encoder config (model_type clip_text_model / clip_vision_model), "
            f"got model_type {model_type!r}. For a CLIPModel config pass its text_config or vision_config."
        )
    cls = CLIPTextConfig if model_type == "clip_text_model" else CLIPVisionConfig
    return cls.from_dict({**raw, "model_type": model_type})


@dataclass(frozen=True)
class Checkpoint:
    """One published checkpoint on the Hugging Face Hub."""

    name: str
    repo_id: str
    base_model: str
    encoders: Mapping[EncoderKind, EncoderFingerprint] = field(default_factory=dict)
    revision: str = "main"
    license: str = "cc-by-nc-4.0"
    fits: str = ""
    # Considered by checkpoint="auto". Off for entries whose architecture is not verified.
    auto: bool = True
    notes: str = ""
    # Other spellings of `repo_id` in use. The Hub resolves Hub ids case-insensitively, but a local cache
    # keeps each spelling in its own folder (models--aimagelab--HySAC vs models--aimagelab--hysac).
    aliases: tuple[str, ...] = ()

    @property
    def hub_name(self) -> str:
        return f"{self.repo_id}@{self.revision}"

    @property
    def hub_ids(self) -> tuple[str, ...]:
        """`repo_id` and its `aliases`."""
        return (self.repo_id, *self.aliases)


def _vit_l_text() -> EncoderFingerprint:
    return EncoderFingerprint(
        kind="text", hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072,
        hidden_act="quick_gelu", projection_dim=768, vocab_size=49408, max_positions=77,
    )  # fmt: skip


def _vit_l_vision(image_size: int) -> EncoderFingerprint:
    return EncoderFingerprint(
        kind="vision", hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096,
        hidden_act="quick_gelu", projection_dim=768, image_size=image_size, patch_size=14,
    )  # fmt: skip


_VIT_H_TEXT = EncoderFingerprint(
    kind="text", hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096,
    hidden_act="gelu", projection_dim=1024, vocab_size=49408, max_positions=77,
)  # fmt: skip
# SD 2.x's text encoder: OpenCLIP ViT-H/14's text tower cut to 23 of its 24 layers, no projection head.
_SD2_TEXT = EncoderFingerprint(
    kind="text", hidden_size=1024, num_layers=23, num_heads=16, intermediate_size=4096,
    hidden_act="gelu", projection_dim=None, vocab_size=49408, max_positions=77,
)  # fmt: skip
_VIT_H_VISION = EncoderFingerprint(
    kind="vision", hidden_size=1280, num_layers=32, num_heads=16, intermediate_size=5120,
    hidden_act="gelu", projection_dim=1024, image_size=224, patch_size=14,
)  # fmt: skip

# Order matters: checkpoint="auto" takes the first entry that fits. The 224 px ViT-L/14 comes
# before the 336 px one because their text towers have the same shape and SD v1.x / SDXL were
# trained on the 224 px model's text encoder. safeclip_sd_20 (23 layers, the release named for SD 2.0)
# comes before the 24-layer ViT-H one, which would also fit SD 2.x after truncation: SD 2.x gets the
# release made for it, a 24-layer ViT-H text tower gets safeclip_vit-h_14.
CHECKPOINTS: dict[str, Checkpoint] = {
    entry.name: entry
    for entry in (
        Checkpoint(
            name="safeclip-vit-l-14",
            repo_id="aimagelab/safeclip_vit-l_14",
            base_model="openai/clip-vit-large-patch14",
            encoders={"text": _vit_l_text(), "vision": _vit_l_vision(224)},
            fits="SD v1.x text_encoder; SDXL text_encoder (ViT-L half only); LLaVA 1.0 vision tower",
        ),
        Checkpoint(
            name="safeclip-vit-l-14-336",
            repo_id="aimagelab/safeclip_vit-l_14_336",
            base_model="openai/clip-vit-large-patch14-336",
            encoders={"text": _vit_l_text(), "vision": _vit_l_vision(336)},
            fits="LLaVA 1.5 / 1.6 vision tower",
        ),
        Checkpoint(
            name="safeclip-sd-20",
            repo_id="aimagelab/safeclip_sd_20",
            base_model="stabilityai/stable-diffusion-2",
            encoders={"text": _SD2_TEXT},
            fits="SD v2.x text_encoder (the release its authors named for SD 2.0)",
            notes="Picked by checkpoint='auto' for SD 2.x (a 23-layer ViT-H text encoder). Its fingerprint is "
            "SD 2's text encoder, not read from the released config; the shape check runs against the "
            "downloaded config before anything is swapped.",
        ),
        Checkpoint(
            name="safeclip-vit-h-14",
            repo_id="aimagelab/safeclip_vit-h_14",
            base_model="laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
            encoders={"text": _VIT_H_TEXT, "vision": _VIT_H_VISION},
            fits="ViT-H/14 CLIP; SD v2.x text_encoder by name (first 23 of 24 layers + final layer norm)",
        ),
        Checkpoint(
            name="hysac",
            repo_id="aimagelab/HySAC",
            aliases=("aimagelab/hysac",),
            base_model="openai/clip-vit-large-patch14",
            encoders={},
            fits="HySAC classification / retrieval (safe_encoders.hysac), not a drop-in encoder",
            auto=False,
            notes="Ships hysac_model.pth (pickle) and hysac_bounds.json.",
        ),
    )
}


def list_checkpoints() -> list[Checkpoint]:
    """All registered checkpoints, in `checkpoint="auto"` priority order."""
    return list(CHECKPOINTS.values())


def lookup_checkpoint(name: str) -> Checkpoint | None:
    """The checkpoint registered under `name` (registry name or Hub id, optionally `hf-hub:`-prefixed,
    case-insensitive), or None."""
    wanted = name.removeprefix("hf-hub:").lower()
    for entry in CHECKPOINTS.values():
        if wanted in (entry.name.lower(), *(hub_id.lower() for hub_id in entry.hub_ids)):
            return entry
    return None


def hub_spelling(entry: Checkpoint, requested: str, cache_dir: str | os.PathLike | None = None) -> str:
    """The Hub id to fetch `entry` under, given what the user `requested` (registry name or Hub id).

    A local Hub cache is keyed by the spelling a download used, so a cache filled by the authors' code
    (`aimagelab/HySAC`) and one filled with `aimagelab/hysac` are different folders. Tried in order: the
    user's own spelling when `requested` is a Hub id of `entry`, then `entry.hub_ids`; the first with a
    folder in the cache (`cache_dir`, default `HF_HUB_CACHE`) wins. With none cached, the first candidate
    goes to the Hub (which accepts any of them).
    """
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    bare = str(requested).removeprefix("hf-hub:")
    own = [bare] if bare.lower() in {hub_id.lower() for hub_id in entry.hub_ids} else []
    candidates = list(dict.fromkeys([*own, *entry.hub_ids]))
    root = Path(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE).expanduser()
    for repo_id in candidates:
        if (root / repo_folder_name(repo_id=repo_id, repo_type="model")).is_dir():
            return repo_id
    return candidates[0]


def get_checkpoint(name: str) -> Checkpoint:
    """Look a checkpoint up by registry name or Hub id (case-insensitive)."""
    entry = lookup_checkpoint(name)
    if entry is not None:
        return entry
    close = difflib.get_close_matches(name, list(CHECKPOINTS), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise CheckpointNotFoundError(
        f"No registered checkpoint is called {name!r}.{hint} Registered: {', '.join(CHECKPOINTS)}."
    )


def find_checkpoint(config: Any, *, has_projection: bool = False, kind: EncoderKind | None = None) -> Checkpoint:
    """The first registered checkpoint (with `auto=True`) whose encoder fits the encoder `config`.

    Args:
        config: the transformers config (or its dict) of the encoder to be replaced.
        has_projection: whether the encoder to be replaced has a projection head that must be filled too.
        kind: force "text" or "vision" instead of reading it from the config.

    Raises:
        ArchitectureMismatchError: no registered checkpoint fits; the message lists what exists.
    """
    target = EncoderFingerprint.from_config(config)
    if kind is not None and target.kind != kind:
        raise ArchitectureMismatchError(f"Expected a {kind} encoder config, got a {target.kind} one.")
    for entry in CHECKPOINTS.values():
        source = entry.encoders.get(target.kind)
        if entry.auto and source and not source.mismatches(target, target_has_projection=has_projection):
            return entry
    raise ArchitectureMismatchError(
        f"No registered Safe-CLIP checkpoint fits a {target.describe()} encoder. "
        f"Registered {target.kind} encoders: {_describe_registered(target.kind)}. "
        "If you have a compatible checkpoint, pass it explicitly: checkpoint='org/repo' or a local path."
    )


def _describe_registered(kind: EncoderKind) -> str:
    items = [f"{e.name} ({e.encoders[kind].describe()})" for e in CHECKPOINTS.values() if kind in e.encoders]
    return "; ".join(items) or "none"


def fitting_checkpoint_names(target: EncoderFingerprint, *, has_projection: bool = False) -> list[str]:
    """Names of every registered checkpoint (auto or not) whose encoder fits `target`."""
    return [
        e.name
        for e in CHECKPOINTS.values()
        if target.kind in e.encoders
        and not e.encoders[target.kind].mismatches(target, target_has_projection=has_projection)
    ]
