"""The metrics log of a training run: JSONL (one line per logged step or epoch) and, optionally, TensorBoard."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from safe_encoders.atomic import atomic_write_text


def _record_step(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


class MetricsLog:
    """Append-only JSONL (one line per logged step or epoch), trimmed to a step on resume."""

    def __init__(self, path: Path, enabled: bool, tensorboard_dir: Path | None) -> None:
        self.path, self.enabled = path, enabled
        self.writer = None
        if enabled and tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                SummaryWriter = None
            if SummaryWriter is not None:
                self.writer = SummaryWriter(str(tensorboard_dir))

    def trim(self, global_step: int) -> None:
        """Keep the records up to ``global_step`` (a resume replays the rest); a line cut short by a kill or a
        full disk is dropped."""
        if self.enabled and self.path.exists():
            lines = [ln for ln in self.path.read_text().splitlines() if _record_step(ln) <= global_step]
            atomic_write_text(self.path, "".join(ln + "\n" for ln in lines))

    def close(self) -> None:
        """Flush and close the TensorBoard writer (the JSONL file is opened per record)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self.writer.add_scalar(key, value, record["step"])
