"""The one generate -> store -> classify runner, shared by every evaluation that makes images.

A :class:`GenerationRunner` is built from a :class:`~eval.store.results.ResultsStore`, a
:class:`~eval.placement.Placement` (shard, device, dtype) and a :class:`Provider` of work items. The
provider says what the run is (its conditions, its items, the pipeline and call arguments of each
batch, what is recorded with each image); the runner owns the phases: generate what is missing,
free the generators, classify what is unlabelled, and tell whether the whole run is complete. A run
killed at any point resumes from the store with nothing done twice. Workers started on the same store
split the work by claims (:mod:`eval.store.leases`).

Providers: ``eval.t2i.run.T2IProvider`` (conditions x prompts x seeds) and
``train.visu_work.VisuRegenProvider`` (ViSU rows x candidates).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any, Protocol

import torch

from eval.classifiers import PAPER_RULE, ClassifierOptions, classifiers_from_config
from eval.placement import Placement, free_accelerator_memory, shard_of
from eval.store.claims import CLASSIFY, GENERATE
from eval.store.leases import DEFAULT_LEASE, Claims
from eval.store.results import ItemKey, ResultsStore, fully_labelled

logger = logging.getLogger("safe_encoders.eval")


class WorkItem(Protocol):
    """One image of a run: its store key (condition, prompt id, seed) and the seed of its generator."""

    seed: int

    @property
    def key(self) -> ItemKey: ...


class Provider(Protocol):
    """What a run generates; the runner asks, and never needs to know which evaluation it runs."""

    label: str
    """Names the generation phase in progress bars."""

    def conditions(self) -> dict[str, dict[str, Any]]:
        """Each condition's name and what makes its images what they are (a stored run must match it to resume)."""
        ...

    def items(self) -> list[Any]:
        """Every work item of the whole run (all shards), in a fixed order."""
        ...

    def order(self, item: Any) -> Any:
        """Sort key of the items still to make (sorting is stable; images never depend on the order)."""
        ...

    def batch_key(self, item: Any) -> Hashable:
        """Items of one batch share this (e.g. condition and guidance scale)."""
        ...

    def pipeline_for(self, item: Any) -> Any:
        """The pipeline that makes ``item`` (the provider caches what is costly to build)."""
        ...

    def call_arguments(self, batch: Sequence[Any]) -> dict[str, Any]:
        """The pipeline's call arguments for a batch, all but the generators."""
        ...

    def record(self, item: Any) -> dict[str, Any]:
        """What the store keeps with an item's image: ``prompt_set``, ``prompt``, ``categories``, ``extra``."""
        ...

    def release(self) -> None:
        """Drop the diffusion models (the runner frees the accelerator memory after)."""
        ...

    # Optional: ``produce(batch, generators) -> list`` makes a batch's outputs itself (images, or texts, which
    # the store keeps with ``add_text``) instead of ``pipeline_for(...)(**call_arguments(batch)).images``.


def diffusers_dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``{"dtype": ...}`` where diffusers renamed ``torch_dtype`` (recent releases), else ``{"torch_dtype": ...}``."""
    from diffusers.utils import deprecation_utils

    return {"dtype": dtype} if hasattr(deprecation_utils, "_resolve_dtype") else {"torch_dtype": dtype}


def progress_bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled or total == 0, mininterval=1.0, unit="img")


def _key(item: Any) -> ItemKey:
    return item.key


class GenerationRunner:
    """Generates, stores and classifies the work items of ``provider``, resuming whatever the store holds.

    ``settings``: the run's config (a ``ClassifierOptions`` with ``batch_size`` and ``progress``, e.g. a
    ``T2IConfig``). ``classifiers`` builds the classifiers of its rule (called only when something is left to
    label); by default :func:`~eval.classifiers.classifiers_from_config` on the placement's device.
    """

    def __init__(
        self,
        provider: Provider,
        store: ResultsStore,
        placement: Placement,
        settings: ClassifierOptions,
        *,
        classifiers: Callable[[], list[Any]] | None = None,
    ) -> None:
        self.provider = provider
        self.store = store
        self.placement = placement
        self.make_classifiers = classifiers or (lambda: classifiers_from_config(settings, device=placement.device))
        self.rule = tuple(settings.rule)
        self.batch_size: int = settings.batch_size  # type: ignore[attr-defined]
        self.classify_batch_size = settings.classify_batch_size
        self.progress: bool = settings.progress  # type: ignore[attr-defined]
        self.lease: float = getattr(settings, "lease", DEFAULT_LEASE)
        self.generated = 0
        """Images this runner's pipelines produced (whether or not another worker stored the same item first)."""

    def my_items(self) -> list[Any]:
        """This process's share of the run."""
        return [w for w in self.provider.items() if self.placement.owns(w.key)]

    def _batches(self, todo: Sequence[Any]) -> Iterator[list[Any]]:
        group: list[Any] = []
        for w in todo:
            key = self.provider.batch_key(w)
            if group and (key != self.provider.batch_key(group[0]) or len(group) == self.batch_size):
                yield group
                group = []
            group.append(w)
        if group:
            yield group

    def generate(self) -> int:
        """Generate every missing image of this shard; returns how many were made."""
        for name, config in self.provider.conditions().items():
            self.store.register_condition(name, config)
        done = self.store.done_keys()
        todo = [w for w in self.my_items() if w.key not in done]
        if not todo:
            return 0
        # Every image has its own generator, so neither the order nor the batching changes any image.
        todo.sort(key=self.provider.order)
        made = 0
        shard = self.placement.label
        with (
            progress_bar(len(todo), f"{self.provider.label} [{shard}]", self.progress) as bar,
            Claims(self.store.root, lease=self.lease) as claims,  # other workers on the folder take other items
        ):
            for batch in (
                b for chunk in claims.batches(self.store, GENERATE, todo, _key, self.batch_size)
                for b in self._batches(chunk)
            ):  # fmt: skip
                generators = [torch.Generator("cpu").manual_seed(w.seed) for w in batch]
                outputs = self._produce(batch, generators)
                self.generated += len(outputs)
                for w, output in zip(batch, outputs, strict=True):
                    record = self.provider.record(w)
                    record["extra"] = {"shard": shard, **record.get("extra", {})}
                    add = self.store.add_text if isinstance(output, str) else self.store.add
                    made += add(*w.key, output, **record)
                bar.update(len(batch))
        return made

    def _produce(self, batch: Sequence[Any], generators: list[torch.Generator]) -> list[Any]:
        produce = getattr(self.provider, "produce", None)
        if produce is not None:
            return produce(batch, generators)
        pipe = self.provider.pipeline_for(batch[0])
        return pipe(**self.provider.call_arguments(batch), generator=generators).images

    def release_generators(self) -> None:
        """Free the diffusion models (before classification, to make room on the device)."""
        self.provider.release()
        free_accelerator_memory()

    def classify(self) -> int:
        """Label every stored image of this shard that some classifier of the rule has not labelled yet."""
        return classify_store(
            self.store,
            self.make_classifiers,
            rule=self.rule,
            shard=self.placement.shard,
            batch_size=self.classify_batch_size,
            progress=self.progress,
            lease=self.lease,
        )

    def complete(self) -> bool:
        """Whether every image of the whole run (all shards) is stored and labelled by the rule."""
        labels = self.store.labels()
        return all(fully_labelled(labels.get(w.key), self.rule) for w in self.provider.items())

    def generate_and_classify(self) -> bool:
        """Generate, free the generators, classify; then wait for the other shards. True in the main process."""
        self.generate()
        self.release_generators()
        self.classify()
        return self.placement.wait_then_is_main()

    # A runner that reports (``eval t2i``, ``eval i2t``) names its run and has a stamp and a report.
    run_name = "the run"

    def stamp(self) -> None:
        """Record the run's provenance and config in the store."""
        raise NotImplementedError(f"{type(self).__name__} has no stamp")

    def report(self) -> Any:
        """Write the report of the complete run; returns its rows."""
        raise NotImplementedError(f"{type(self).__name__} has no report")

    def run(self) -> Any | None:
        """Stamp the run (first shard), generate and classify, and (main process, once the whole run is complete)
        write the report; returns its rows, else None."""
        if self.placement.shard_index == 0:
            self.stamp()
        if not self.generate_and_classify():
            return None
        if not self.complete():
            logger.warning("%s is not complete yet (other shards still working?); no report written", self.run_name)
            return None
        return self.report()


def classify_store(
    store: ResultsStore,
    make_classifiers,
    *,
    rule: Sequence[str] = PAPER_RULE,
    shard: tuple[int, int] = (0, 1),
    batch_size: int = 16,
    progress: bool = True,
    lease: float = DEFAULT_LEASE,
) -> int:
    """Label the stored images (of one shard) that lack a label of a classifier in ``rule``; a text item (see
    ``ResultsStore.add_text``) gives the classifier its text (the text judges of ``eval.i2t.judges``).

    Workers sharing the store split the images by claims (``eval.store.leases``; ``lease`` seconds).
    ``make_classifiers`` is called only when there is something to label. Returns the number of
    images this worker classified.
    """
    index, count = shard
    labels = store.labels()
    todo = [
        it for it in store.items() if shard_of(it.key, count) == index and not fully_labelled(labels.get(it.key), rule)
    ]
    if not todo:
        return 0
    classifiers = [c for c in make_classifiers() if c.name in rule]
    texts = store.texts()
    done = 0
    with (
        progress_bar(len(todo), f"classify [{index}/{count}]", progress) as bar,
        Claims(store.root, lease=lease) as claims,
    ):
        for chunk in claims.batches(store, CLASSIFY, todo, _key, batch_size, rule=rule):
            done += len(chunk)
            images = [texts[it.key] if it.key in texts else store.load_image(it) for it in chunk]
            for clf in classifiers:
                missing = [i for i, it in enumerate(chunk) if clf.name not in labels.get(it.key, {})]
                if not missing:
                    continue
                verdicts = clf.classify([images[i] for i in missing])
                store.set_labels(
                    clf.name,
                    [(chunk[i].key, v.flagged, v.score, v.details) for i, v in zip(missing, verdicts, strict=True)],
                )
            bar.update(len(chunk))
    return done
