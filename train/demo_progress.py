"""What the demo's user sees while a training run works: one line every few seconds with the running epoch, step
and loss, read from the run's own ``metrics.jsonl`` (the training loop writes a record per logged step)."""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

DEMO_THREADS = 1
"""The demo's torch threads when none are asked for. Its models are tiny (width 64, batches of 128): a second thread
saves little on an idle machine, and when another process holds a core torch's threads spin waiting for each other
and the run takes many times longer (measured in the README's Quick start).

(A local choice: a package-wide thread policy may replace it.)"""

STEP_LINE_EVERY_S = 5.0
"""Seconds between two step lines."""


def last_step_record(path: Path, tail_bytes: int = 16384) -> dict[str, Any] | None:
    """The newest record of a metrics log that has a training ``loss`` (epoch records only have validation
    figures), read from the file's tail; None while there is none."""
    try:
        with path.open("rb") as file:
            file.seek(0, 2)
            size = file.tell()
            file.seek(max(0, size - tail_bytes))
            lines = file.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:  # a line being written, or cut by the tail's start
            continue
        if isinstance(record, dict) and "loss" in record and "epoch" in record:
            return record
    return None


class StepLines:
    """An ``on_step`` hook of ``train.loop.run_training``: at most one line per ``every`` seconds (default
    ``STEP_LINE_EVERY_S``), e.g.
    ``  pre-training: epoch 3/15, step 57, loss 2.911 (40 s)``."""

    def __init__(
        self,
        label: str,
        run_dir: Path,
        epochs: int,
        say: Callable[[str], Any],
        every: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label, self.log, self.epochs, self.say, self.every, self.clock = (
            label,
            Path(run_dir) / "metrics.jsonl",
            epochs,
            say,
            STEP_LINE_EVERY_S if every is None else every,
            clock,
        )
        self.start = self.last = clock()

    def __call__(self, global_step: int) -> None:
        now = self.clock()
        if now - self.last < self.every:
            return
        record = last_step_record(self.log)
        if record is None:
            return
        self.last = now
        self.say(
            f"    {self.label}: epoch {record['epoch'] + 1}/{self.epochs}, step {global_step}, "
            f"loss {record['loss']:.3f} ({now - self.start:.0f} s)"
        )


@contextlib.contextmanager
def quiet_libraries(enabled: bool = True) -> Iterator[None]:
    """While the demo runs, no output the user cannot act on: transformers' (and huggingface_hub's) progress bars
    (a bar per saved model), peft's FutureWarning about transformers' renamed ``is_gradient_checkpointing`` and
    transformers' "requires torchvision" fallback warning when diffusers' modules import image processors.
    Both are put back as they were after; ``enabled=False`` (the demo's ``--verbose``) changes nothing."""
    if not enabled:
        yield
        return
    from transformers.utils import logging as hf_logging

    from safe_encoders.image_processors import no_torchvision_fallback_warning

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings(), no_torchvision_fallback_warning():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()
