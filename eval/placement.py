"""Where a generation run executes: its shard of the work, device and dtype, and what every run records.

Shared by ``python -m eval t2i`` (:class:`eval.t2i.run.T2IRunner`) and ``python -m train visu-images``
(:class:`train.visu_images.RegenRunner`).
"""

from __future__ import annotations

import argparse
import gc
import platform
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from eval.store.results import ItemKey


def shard_of(key: ItemKey, num_shards: int) -> int:
    """Which of ``num_shards`` processes owns an item: a fixed function of the key (no overlap)."""
    condition, prompt_id, seed = key
    return zlib.crc32(f"{condition}\x00{prompt_id}\x00{seed}".encode()) % num_shards


def default_device(name: str | None = None) -> torch.device:
    """``name`` if given, else the GPU when there is one, else the CPU."""
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


@dataclass(frozen=True)
class Placement:
    """This process's shard of a run, its device and dtype, and the ``accelerate`` state (None for a manual shard)."""

    shard_index: int
    num_shards: int
    device: torch.device
    dtype: torch.dtype
    state: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def resolve(
        cls, shard: tuple[int, int] | None = None, *, device: str | None = None, dtype: str | None = None
    ) -> Placement:
        """The placement of this process: ``shard`` = ``(index, count)``, else one shard per accelerate process;
        ``device``, else accelerate's, else cuda / cpu; ``dtype``, else float16 on cuda and float32 elsewhere."""
        state = None
        if shard is None:
            from accelerate import PartialState

            # cpu=True on machines without a GPU, so that a multi-process launch (torchrun, or
            # accelerate configured for MULTI_CPU) is seen as distributed rather than as N copies.
            state = PartialState(cpu=not torch.cuda.is_available())
            shard = (state.process_index, state.num_processes)
        index, count = shard
        if not 0 <= index < count:
            raise ValueError(f"shard index {index} is not in [0, {count})")
        if device:
            where = torch.device(device)
        elif state is not None:
            where = state.device
        else:
            where = default_device()
        default_dtype = "float16" if where.type == "cuda" else "float32"
        return cls(index, count, where, getattr(torch, dtype or default_dtype), state)

    @property
    def shard(self) -> tuple[int, int]:
        """``(index, count)``."""
        return self.shard_index, self.num_shards

    @property
    def label(self) -> str:
        """``"index/count"``, as stored with every item and shown in progress bars."""
        return f"{self.shard_index}/{self.num_shards}"

    def owns(self, key: ItemKey) -> bool:
        """Whether this process's shard holds the item."""
        return shard_of(key, self.num_shards) == self.shard_index

    def wait_then_is_main(self) -> bool:
        """Wait for every process of the launch, then tell whether this one is the main one (always, alone)."""
        if self.state is None:
            return True
        self.state.wait_for_everyone()
        return self.state.is_main_process


def run_provenance() -> dict[str, str | None]:
    """What produced a run: safe_encoders version, git revision, torch and python versions, and the time (the
    store's short record; ``provenance.json`` beside the results has the full one)."""
    import safe_encoders
    from eval.report.provenance import git_revision

    return {
        "safe_encoders": getattr(safe_encoders, "__version__", None),
        "git": git_revision(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def record_run(store: Any, config: Any, **overrides: Any) -> None:
    """Record a run's provenance and config (a dataclass; paths as text, ``hub_kwargs`` left out: they may hold a
    token) on its results store: as the latest, and appended to the store's history of runs. ``overrides``
    replace config fields that need their own text form."""
    cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items() if k != "hub_kwargs"}
    cfg.update(overrides)
    provenance = run_provenance()
    store.set_meta("provenance", provenance)
    store.set_meta("runs", [*store.get_meta("runs", []), {**provenance, "config": cfg}])


def free_accelerator_memory() -> None:
    """Collect garbage and hand cached GPU memory back (after dropping the references to a model)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def parse_shard(text: str) -> tuple[int, int]:
    """``"INDEX/COUNT"`` -> ``(index, count)`` (an argparse type)."""
    index, _, count = text.partition("/")
    try:
        shard = int(index), int(count)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes INDEX/COUNT, e.g. 0/2; got {text!r}") from None
    if not 0 <= shard[0] < shard[1]:
        raise argparse.ArgumentTypeError(f"--shard INDEX/COUNT needs 0 <= INDEX < COUNT, e.g. 0/2; got {text!r}")
    return shard
