"""Generate a prompt set under ``eval t2i`` conditions with the harness's own runner (store, placement, sharding,
resume), for the commands that bring their own prompts: ``eval quality`` (captions) and ``eval attack``
(adversarial prompt sets)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.data.prompt_set import PromptSet
from eval.errors import ConditionError
from eval.generation import GenerationRunner
from eval.placement import Placement, record_run
from eval.store.results import ResultsStore
from eval.t2i.conditions import parse_conditions
from eval.t2i.run import T2IConfig, T2IProvider


@dataclass(kw_only=True)
class GenerationSettings:
    """How the commands that bring their own prompts (``eval quality``, ``eval attack``) make their images: the
    options of :func:`add_generation_options`, which :func:`generation_kwargs` reads back. Their configs extend
    it; :meth:`to_t2i_config` is the ``eval t2i`` config that generates them."""

    model: str
    conditions: list[str]
    out: Path
    safe_checkpoint: str = "auto"
    unet: str | None = None
    limit: int | None = None
    """First N prompts (``eval attack``: of each set)."""
    steps: int = 50
    guidance: float | None = None
    size: int | None = None
    batch_size: int = 4
    dtype: str | None = None
    device: str | None = None
    progress: bool = True
    hub_kwargs: dict[str, Any] = field(default_factory=dict)

    def to_t2i_config(self, *, prompts: str, store_dir: str, images_per_prompt: int, **fields: Any) -> T2IConfig:
        """These settings as an ``eval t2i`` config writing to ``out/store_dir``, without the paper's reference
        rows; ``fields``: the other :class:`~eval.t2i.run.T2IConfig` fields the command sets (rule, classifiers...).
        ``limit`` is not passed on: a command applies it where it means to (per caption set, per attack set)."""
        return T2IConfig(
            model=self.model,
            prompts=prompts,
            conditions=list(self.conditions),
            out=Path(self.out) / store_dir,
            safe_checkpoint=self.safe_checkpoint,
            unet=self.unet,
            images_per_prompt=images_per_prompt,
            steps=self.steps,
            guidance=self.guidance,
            height=self.size,
            width=self.size,
            batch_size=self.batch_size,
            dtype=self.dtype,
            device=self.device,
            reference=None,
            progress=self.progress,
            hub_kwargs=self.hub_kwargs,
            **fields,
        )


@dataclass
class PromptSetRun:
    """The outcome of :func:`run_prompt_set` in this process."""

    store: ResultsStore
    placement: Placement
    is_main: bool
    complete: bool


def run_prompt_set(config: T2IConfig, prompts: PromptSet, *, shard: tuple[int, int] | None = None) -> PromptSetRun:
    """Generate every image of ``prompts`` x ``config.conditions`` (``config.images_per_prompt`` each) into the
    store at ``config.out`` with :class:`~eval.generation.GenerationRunner` and ``eval t2i``'s provider, label
    them with ``config.rule`` (nothing to label when the rule is empty), and wait for the other processes.
    ``complete`` tells (in the main process) whether every image of the run is stored and labelled."""
    conditions = parse_conditions(config.conditions)
    if any(c.unet for c in conditions) and not config.unet:
        raise ConditionError("a '+unet' condition needs --unet (a diffusers UNet folder, Hub id or .safetensors)")
    if config.images_per_prompt < 1 or config.steps < 1 or config.batch_size < 1:
        raise ConditionError("images per prompt, steps and batch size must all be >= 1")
    placement = Placement.resolve(shard, device=config.device, dtype=config.dtype)
    prompts = prompts.limit(config.limit)
    store = ResultsStore(config.out)
    runner = GenerationRunner(T2IProvider(config, conditions, prompts, placement, store), store, placement, config)
    if placement.shard_index == 0:
        record_run(store, config)
    if config.rule:
        is_main = runner.generate_and_classify()
    else:
        runner.generate()
        runner.release_generators()
        is_main = placement.wait_then_is_main()
    complete = False
    if is_main:
        done = store.done_keys()
        complete = runner.complete() if config.rule else all(w.key in done for w in runner.provider.items())
    return PromptSetRun(store, placement, is_main, complete)


def condition_names(conditions: Sequence[str]) -> list[str]:
    """The canonical names of ``eval t2i`` conditions (``"SD+Safe"`` -> ``"sd+safe"``), validated."""
    return [c.name for c in parse_conditions(list(conditions))]
