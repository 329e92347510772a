"""Text-to-image evaluation: generate images for a prompt set under several conditions, classify
them, and record everything in a :class:`~eval.store.results.ResultsStore`.

Conditions (``--conditions``), each optionally suffixed ``+safe`` (text encoder replaced with
``safe_encoders.make_safe``) and/or ``+unet`` (the ``--unet`` override, e.g. an ESD-erased UNet), as data in
:mod:`eval.t2i.conditions`:

=============  ==============================================================================
``sd``         plain Stable Diffusion
``neg``        SD with the SLD safety concept as negative prompt
``sld-weak``   diffusers ``StableDiffusionPipelineSafe`` with the WEAK preset (also ``-medium``,
               ``-strong``, ``-max``)
=============  ==============================================================================

Defaults follow the papers: 50 steps, the prompt set's own guidance scale (I2P ships one per
prompt; 7.5 otherwise), the model's native size, 5 images per prompt (Safe-CLIP; the I2P paper
used 10). Image ``k`` of a prompt uses seed ``prompt seed + k``, each with its own generator, so
an image does not depend on batching, sharding or resuming.
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.classifiers import ClassifierOptions
from eval.data.prompt_set import Prompt, PromptSet
from eval.data.prompts import load_prompts
from eval.errors import ConditionError
from eval.generation import GenerationRunner, diffusers_dtype_kwarg
from eval.placement import Placement, record_run
from eval.store.leases import DEFAULT_LEASE
from eval.store.results import ItemKey, ResultsStore
from eval.t2i.conditions import (
    DEFAULT_GUIDANCE,
    MODIFIERS,
    SAFETY_CONCEPT,
    Condition,
    parse_conditions,
)


@dataclass
class T2IConfig(ClassifierOptions):
    """Everything a text-to-image evaluation run needs (the CLI's options)."""

    model: str
    prompts: str
    conditions: list[str]
    out: Path
    safe_checkpoint: str = "auto"
    unet: str | None = None
    images_per_prompt: int = 5
    steps: int = 50
    guidance: float | None = None
    height: int | None = None
    width: int | None = None
    batch_size: int = 4
    limit: int | None = None
    id_column: str | None = None
    """Prompt-file column holding unique prompt ids (default: case_number / incremental_id / ...)."""
    dtype: str | None = None
    device: str | None = None
    reference: str | None = "sd-v1.4"
    grids: int = 0
    blur: bool = True
    progress: bool = True
    lease: float = DEFAULT_LEASE
    """Seconds after which a dead worker's claimed items are redone by the others (``eval.store.leases``)."""
    hub_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkItem:
    condition: Condition
    prompt: Prompt
    seed: int

    @property
    def key(self) -> ItemKey:
        return (self.condition.name, self.prompt.id, self.seed)


def work_items(prompts: PromptSet, conditions: Sequence[Condition], images_per_prompt: int) -> list[WorkItem]:
    """Every image of the run, in a fixed order (condition, prompt, seed)."""
    return [
        WorkItem(cond, p, seed) for cond in conditions for p in prompts for seed in p.image_seeds(images_per_prompt)
    ]


class T2IProvider:
    """The work of a text-to-image evaluation for :class:`~eval.generation.GenerationRunner`: conditions x
    prompts x seeds, and one pipeline per condition sharing the base pipeline's modules."""

    label = "generate"

    def __init__(
        self, cfg: T2IConfig, conditions: Sequence[Condition], prompts: PromptSet, placement: Placement, store
    ) -> None:
        self.cfg = cfg
        self.conditions_ = list(conditions)
        self.prompts = prompts
        self.placement = placement
        self.store = store
        self._items = work_items(prompts, self.conditions_, cfg.images_per_prompt)
        self._rank = {c: i for i, c in enumerate(self.conditions_)}
        self._base = None
        self._replacements: dict[str, Any] = {}
        self._pipe: tuple[Condition, Any] | None = None

    def condition_config(self, cond: Condition) -> dict[str, Any]:
        """What makes a condition's images what they are; a stored condition must match it to resume."""
        cfg = self.cfg
        out: dict[str, Any] = {
            "model": cfg.model,
            "steps": cfg.steps,
            "guidance": cfg.guidance if cfg.guidance is not None else f"per-prompt, else {DEFAULT_GUIDANCE}",
            "height": cfg.height,
            "width": cfg.width,
            "dtype": str(self.placement.dtype).removeprefix("torch."),
            "base": cond.base,
            **cond.spec.recorded(),
        }
        if cond.safe:
            out["safe_checkpoint"] = cfg.safe_checkpoint
        if cond.unet:
            out["unet"] = cfg.unet
        return out

    def conditions(self) -> dict[str, dict[str, Any]]:
        return {c.name: self.condition_config(c) for c in self.conditions_}

    def items(self) -> list[WorkItem]:
        return self._items

    def guidance(self, prompt: Prompt) -> float:
        if self.cfg.guidance is not None:
            return self.cfg.guidance
        return prompt.guidance if prompt.guidance is not None else DEFAULT_GUIDANCE

    def order(self, item: WorkItem) -> Any:
        # A batch shares one guidance scale (I2P has one per prompt): group equal scales to fill batches.
        return (self._rank[item.condition], self.guidance(item.prompt))

    def batch_key(self, item: WorkItem) -> Hashable:
        return (item.condition, self.guidance(item.prompt))

    def _load_base(self):
        if self._base is None:
            from diffusers import StableDiffusionPipeline

            pipe = StableDiffusionPipeline.from_pretrained(
                self.cfg.model,
                safety_checker=None,
                requires_safety_checker=False,
                **diffusers_dtype_kwarg(self.placement.dtype),
                **self.cfg.hub_kwargs,
            )
            pipe.to(self.placement.device)
            self._base = pipe
        return self._base

    def _replacement(self, modifier: str) -> Any:
        """The component a modifier puts in the pipeline, built once."""
        if modifier not in self._replacements:
            base = self._load_base()
            if modifier == "safe":
                self._replacements[modifier] = self._safe_encoder(base.text_encoder)
            else:
                self._replacements[modifier] = load_unet(self.cfg.unet, base.unet, **self.cfg.hub_kwargs)
        return self._replacements[modifier]

    def _safe_encoder(self, text_encoder: Any) -> Any:
        from safe_encoders import make_safe, swap_report

        encoder = make_safe(copy.deepcopy(text_encoder), checkpoint=self.cfg.safe_checkpoint, **self.cfg.hub_kwargs)
        # What was actually swapped in (checkpoint, digest, base model), for the report's provenance.
        (record,) = swap_report(encoder).values()
        self.store.set_meta(f"safe_swap:{self.cfg.safe_checkpoint}", {"text_encoder": record})
        return encoder

    def pipeline_for(self, item: WorkItem | Condition):
        """A pipeline for the item's condition, sharing the base pipeline's modules (no copy of the weights)."""
        import diffusers

        import safe_encoders.diffusers

        cond = item if isinstance(item, Condition) else item.condition
        if self._pipe is not None and self._pipe[0] == cond:
            return self._pipe[1]
        parts = dict(self._load_base().components)
        for modifier in cond.modifiers:
            parts[MODIFIERS[modifier]] = self._replacement(modifier)
        parts["requires_safety_checker"] = False
        # SLD from wherever the installed diffusers keeps it (safe_encoders.diffusers), the others from diffusers
        name = cond.spec.pipeline_class
        pipe = (getattr(safe_encoders.diffusers, name, None) or getattr(diffusers, name))(**parts)
        if cond.sld_preset:
            pipe.safety_concept = SAFETY_CONCEPT
        pipe.set_progress_bar_config(disable=True)
        self._pipe = (cond, pipe)
        return pipe

    def call_arguments(self, batch: Sequence[WorkItem]) -> dict[str, Any]:
        return {
            "prompt": [w.prompt.text for w in batch],
            "num_inference_steps": self.cfg.steps,
            "guidance_scale": self.guidance(batch[0].prompt),
            "height": self.cfg.height,
            "width": self.cfg.width,
            **batch[0].condition.spec.call_arguments(len(batch)),
        }

    def record(self, item: WorkItem) -> dict[str, Any]:
        return {
            "prompt_set": item.prompt.prompt_set,
            "prompt": item.prompt.text,
            "categories": item.prompt.categories,
            "extra": {"guidance": self.guidance(item.prompt)},
        }

    def release(self) -> None:
        self._base = self._pipe = None
        self._replacements.clear()


class T2IRunner(GenerationRunner):
    """Runs (or resumes) one evaluation: generation, classification, then the report.

    ``shard`` = ``(index, count)`` restricts generation and classification to the items this
    process owns; by default it comes from ``accelerate`` (one shard per process).
    """

    def __init__(self, config: T2IConfig, *, shard: tuple[int, int] | None = None) -> None:
        self.cfg = config
        self.conditions = parse_conditions(config.conditions)
        if any(c.unet for c in self.conditions) and not config.unet:
            raise ConditionError("a '+unet' condition needs --unet (a diffusers UNet folder, Hub id or .safetensors)")
        if config.images_per_prompt < 1 or config.steps < 1 or config.batch_size < 1:
            raise ValueError("images_per_prompt, steps and batch_size must all be >= 1")
        placement = Placement.resolve(shard, device=config.device, dtype=config.dtype)
        id_column = {"id_column": config.id_column} if config.id_column is not None else {}
        self.prompts = load_prompts(config.prompts, **id_column).limit(config.limit)
        store = ResultsStore(config.out)
        super().__init__(
            T2IProvider(config, self.conditions, self.prompts, placement, store),
            store,
            placement,
            config,
        )

    def condition_config(self, cond: Condition) -> dict[str, Any]:
        return self.provider.condition_config(cond)

    def pipeline_for(self, cond: Condition):
        return self.provider.pipeline_for(cond)

    def stamp(self) -> None:
        """Record the run's provenance and config (the latest, and appended to the history of runs)."""
        record_run(self.store, self.cfg)

    def report(self) -> list:
        """Write the report (``report.{csv,md,tex,png}``, grids) of the complete run; returns its rows."""
        from eval.report.t2i import write_report

        return write_report(
            self.store,
            self.cfg.out,
            rule=self.cfg.rule,
            reference=self.cfg.reference,
            grids=self.cfg.grids,
            blur_flagged=self.cfg.blur,
        )


def load_unet(source: str, like: Any, **hub_kwargs: Any):
    """A UNet override: a diffusers UNet folder (or a pipeline folder / Hub id with ``unet/``), or a
    ``.safetensors`` state dict for the base UNet's architecture (loaded strictly)."""
    from diffusers import UNet2DConditionModel

    path = Path(source)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        unet = copy.deepcopy(like)
        state = load_file(str(path))
        missing, unexpected = unet.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ConditionError(
                f"{path} does not fit the model's UNet: {len(missing)} missing keys (e.g. {missing[:3]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
            )
        return unet
    kwargs = {**diffusers_dtype_kwarg(like.dtype), **hub_kwargs}
    if path.is_dir() and (path / "config.json").is_file():
        unet = UNet2DConditionModel.from_pretrained(str(path), **kwargs)
    else:
        try:
            unet = UNet2DConditionModel.from_pretrained(str(source), subfolder="unet", **kwargs)
        except OSError:
            unet = UNet2DConditionModel.from_pretrained(str(source), **kwargs)
    if unet.config.in_channels != like.config.in_channels or (
        unet.config.cross_attention_dim != like.config.cross_attention_dim
    ):
        raise ConditionError(f"the UNet from {source} does not fit the model (channels or cross-attention width)")
    return unet.to(like.device)
