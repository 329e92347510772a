"""The work of a ViSU image regeneration (:mod:`train.visu_images`): its config, its items (rows x candidates,
each with its seed) and :class:`VisuRegenProvider`, which hands them to :class:`eval.generation.GenerationRunner`."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.classifiers import ClassifierOptions
from eval.data.prompt_set import Prompt
from eval.data.visu import VISU_SPLITS, VisuRow
from eval.generation import diffusers_dtype_kwarg
from eval.placement import Placement
from eval.store.leases import DEFAULT_LEASE
from eval.store.results import ItemKey

DEFAULT_MODEL = "stablediffusionapi/newrealityxl-global-nsfw"


@dataclass
class RegenConfig(ClassifierOptions):
    """Everything a regeneration run needs (the CLI's options)."""

    out: Path
    text: str | None = None
    """ViSU-Text: None for the gated HF dataset, else a file of one split or a folder of split files."""
    splits: list[str] = field(default_factory=lambda: list(VISU_SPLITS))
    model: str = DEFAULT_MODEL
    candidates: int = 3
    steps: int = 30
    guidance: float = 7.0
    height: int | None = None
    width: int | None = None
    batch_size: int = 4
    limit: int | None = None
    dtype: str | None = None
    device: str | None = None
    keep: str = "first-flagged"
    progress: bool = True
    lease: float = DEFAULT_LEASE
    """Seconds after which a dead worker's claimed items are redone by the others (``eval.store.leases``)."""
    hub_kwargs: dict[str, Any] = field(default_factory=dict)


def row_prompt(row: VisuRow) -> Prompt:
    """The row's unsafe caption as an eval :class:`~eval.data.prompt_set.Prompt` (id ``visu:<row id>``)."""
    return Prompt(
        id=f"visu:{row.row_id}",
        text=row.unsafe_text,
        prompt_set="visu",
        categories=(row.category,) if row.category else (),
        seed=row.seed,
        extra={"row_id": row.row_id, "tag": row.tag},
    )


def candidate_seeds(row: VisuRow, n: int) -> list[int]:
    """Seeds of the row's ``n`` candidates: the published list, else the published seed + k, else derived."""
    if row.seeds:
        if len(row.seeds) < n:
            raise ValueError(f"ViSU row {row.row_id} publishes {len(row.seeds)} seeds, {n} candidates were asked")
        return list(row.seeds[:n])
    return row_prompt(row).image_seeds(n)


def condition_name(split: str) -> str:
    return f"visu-{split}"


@dataclass(frozen=True)
class RegenItem:
    split: str
    row: VisuRow
    index: int
    seed: int

    @property
    def key(self) -> ItemKey:
        return (condition_name(self.split), f"visu:{self.row.row_id}", self.seed)


def regen_items(rows: Mapping[str, Sequence[VisuRow]], n: int) -> list[RegenItem]:
    """Every candidate image of the run, in a fixed order (split, row, candidate)."""
    return [
        RegenItem(split, row, k, seed)
        for split, split_rows in rows.items()
        for row in split_rows
        for k, seed in enumerate(candidate_seeds(row, n))
    ]


# --------------------------------------------------------------------------- the provider


class VisuRegenProvider:
    """The work of a regeneration for :class:`~eval.generation.GenerationRunner`: ViSU rows x candidates,
    all drawn by one text-to-image pipeline (the config's, or ``pipeline``)."""

    label = "visu-images"

    def __init__(self, cfg: RegenConfig, items: list[RegenItem], splits: Sequence[str], placement: Placement, pipeline):
        self.cfg = cfg
        self._items = items
        self.splits = list(splits)
        self.placement = placement
        self.custom = None if pipeline is None else type(pipeline).__name__
        self._pipe = pipeline

    def condition_config(self, split: str) -> dict[str, Any]:
        """What makes the images of a split what they are; a stored split must match it to resume."""
        cfg = self.cfg
        return {
            "task": "visu-unsafe-regeneration",
            "split": split,
            "model": cfg.model if self.custom is None else f"custom:{self.custom}",
            "steps": cfg.steps,
            "guidance": cfg.guidance,
            "height": cfg.height,
            "width": cfg.width,
            "dtype": str(self.placement.dtype).removeprefix("torch."),
            "candidates": cfg.candidates,
        }

    def conditions(self) -> dict[str, dict[str, Any]]:
        return {condition_name(split): self.condition_config(split) for split in self.splits}

    def items(self) -> list[RegenItem]:
        return self._items

    def order(self, item: RegenItem) -> Any:
        return 0  # the run's own order

    def batch_key(self, item: RegenItem) -> Hashable:
        return None  # one pipeline and one guidance scale for every row

    def pipeline_for(self, item: RegenItem) -> Any:
        if self._pipe is None:
            from diffusers import DiffusionPipeline

            kwargs: dict[str, Any] = {**diffusers_dtype_kwarg(self.placement.dtype), **self.cfg.hub_kwargs}
            index = DiffusionPipeline.load_config(self.cfg.model, **self.cfg.hub_kwargs)
            if "safety_checker" in index:  # SD 1/2: the images must be raw, not blacked out
                kwargs.update(safety_checker=None, requires_safety_checker=False)
            pipe = DiffusionPipeline.from_pretrained(self.cfg.model, **kwargs)
            pipe.to(self.placement.device)
            self._pipe = pipe
        self._pipe.set_progress_bar_config(disable=True)
        return self._pipe

    def call_arguments(self, batch: Sequence[RegenItem]) -> dict[str, Any]:
        return {
            "prompt": [w.row.unsafe_text for w in batch],
            "num_inference_steps": self.cfg.steps,
            "guidance_scale": self.cfg.guidance,
            "height": self.cfg.height,
            "width": self.cfg.width,
        }

    def record(self, item: RegenItem) -> dict[str, Any]:
        prompt = row_prompt(item.row)
        return {
            "prompt_set": "visu",
            "prompt": prompt.text,
            "categories": prompt.categories,
            "extra": {"candidate": item.index, "split": item.split, "row_id": item.row.row_id},
        }

    def release(self) -> None:
        self._pipe = None
