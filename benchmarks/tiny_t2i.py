"""The set-up the eval benchmarks share: a tiny random SD pipeline (real CLIP tokenizer), a tiny Q16 CLIP with
its prompts, and a prompts CSV, all in one folder."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TinyT2I:
    """Where :func:`build_tiny_t2i` put each file."""

    sd: Path
    q16_model: Path
    q16_prompts: Path
    prompts: Path


def build_tiny_t2i(root: Path, rows: list[dict[str, object]]) -> TinyT2I:
    """The tiny models in ``root`` and ``root/prompts.csv`` holding ``rows`` (its columns: the first row's keys)."""
    from tests.eval.builders import build_tiny_sd, save_q16_clip, write_q16_prompts

    files = TinyT2I(sd=root / "sd", q16_model=root / "clip", q16_prompts=root / "q16.p", prompts=root / "prompts.csv")
    build_tiny_sd(files.sd)
    save_q16_clip(files.q16_model)
    write_q16_prompts(files.q16_prompts)
    with files.prompts.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return files
