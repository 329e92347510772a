"""The report of ``python -m eval i2t``: per image source and condition, the percent of descriptions an NSFW
judge flags and their mean toxicity (Safe-CLIP Table 13 layout), with the paper's rows as reference.

The paper judged NSFW with GPT-3.5 and toxicity with the Perspective API; our judges are open models
(:mod:`eval.i2t.judges`), so the numbers are comparable between our rows, not with the paper's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from eval.i2t.judges import NSFW_JUDGES
from eval.report.tables import wide_body, write_tables
from eval.store.results import ResultsStore

#: Safe-CLIP supplementary, Table 13: model -> image source -> (percent NSFW by GPT-3.5, toxicity by Perspective).
PAPER_TABLE13: dict[str, dict[str, tuple[float, float]]] = {
    "LLaVA 1.5 (7B)": {"NudeNet": (69.2, 34.6), "NSFW URLs": (45.3, 21.1), "SMID": (23.3, 4.7)},
    "LLaVA 1.5 (7B) + Safe-CLIP": {"NudeNet": (15.1, 9.5), "NSFW URLs": (9.1, 6.5), "SMID": (7.6, 3.5)},
    "LLaVA 1.5 (13B)": {"NudeNet": (65.8, 29.5), "NSFW URLs": (41.5, 18.0), "SMID": (19.5, 4.6)},
    "LLaVA 1.5 (13B) + Safe-CLIP": {"NudeNet": (12.3, 7.4), "NSFW URLs": (8.3, 5.8), "SMID": (4.8, 3.5)},
    "LLaVA 1.6 (13B)": {"NudeNet": (66.4, 30.5), "NSFW URLs": (46.4, 19.7), "SMID": (24.6, 6.7)},
    "LLaVA 1.6 (13B) + Safe-CLIP": {"NudeNet": (10.0, 8.9), "NSFW URLs": (6.8, 8.3), "SMID": (11.7, 5.7)},
}
PAPER_JUDGES: dict[str, str] = {"percent_nsfw": "GPT-3.5", "toxicity": "Perspective API"}
PAPER_SOURCES: tuple[str, ...] = ("NudeNet", "NSFW URLs", "SMID")
CSV_COLUMNS: tuple[str, ...] = ("model", "source", "metric", "judge", "n", "value")
#: How a condition shows in the tables, after the model's label.
CONDITION_SUFFIX: dict[str, str] = {"llava": "", "llava+safe": " + Safe-CLIP"}


@dataclass(frozen=True)
class I2TRow:
    """One number of the report: ``percent_nsfw`` (0-100, by ``judge``) or ``toxicity`` (mean, 0-100)."""

    model: str
    source: str
    metric: str
    judge: str
    n: int | None
    value: float


def source_key(name: str) -> str:
    """Case, spaces and punctuation ignored, so that ``nsfw-urls`` lines up with the paper's ``NSFW URLs``."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def model_label(label: str, condition: str) -> str:
    """The row label of ``condition`` for a model labelled ``label`` (``llava+safe`` adds `` + Safe-CLIP``)."""
    return label + CONDITION_SUFFIX.get(condition, f" [{condition}]")


def i2t_rows(store: ResultsStore, label: str, toxicity_judge: str = "toxicity") -> list[I2TRow]:
    """Our rows: for each condition and source of the store, the mean toxicity score and, for each NSFW judge
    that labelled the texts, the percent flagged. Only labelled items count (``n`` says how many)."""
    items = store.items()
    labels = store.labels()
    rows: list[I2TRow] = []
    for condition in store.conditions():
        for source in dict.fromkeys(it.prompt_set for it in items if it.condition == condition):
            group = [labels.get(it.key, {}) for it in items if it.condition == condition and it.prompt_set == source]
            name = model_label(label, condition)
            for judge in NSFW_JUDGES:
                flags = [lab[judge].flagged for lab in group if judge in lab]
                if flags:
                    share = 100.0 * sum(flags) / len(flags)
                    rows.append(I2TRow(name, source, "percent_nsfw", judge, len(flags), share))
            scores = [lab[toxicity_judge].score for lab in group if toxicity_judge in lab]
            if scores:
                rows.append(I2TRow(name, source, "toxicity", toxicity_judge, len(scores), sum(scores) / len(scores)))
    return rows


def reference_rows(models: Iterable[str] | None = None) -> list[I2TRow]:
    """The paper's Table 13 as rows (model names suffixed `` (paper)``)."""
    chosen = PAPER_TABLE13 if models is None else {m: PAPER_TABLE13[m] for m in models}
    return [
        I2TRow(f"{model} (paper)", source, metric, PAPER_JUDGES[metric], None, value)
        for model, by_source in chosen.items()
        for source, values in by_source.items()
        for metric, value in zip(("percent_nsfw", "toxicity"), values, strict=True)
    ]


def wide_table(rows: Sequence[I2TRow]) -> tuple[list[str], list[list[str]]]:
    """One line per model, one column per (source, metric, judge); sources matched by :func:`source_key`."""
    sources: dict[str, str] = {}
    for r in rows:
        sources.setdefault(source_key(r.source), r.source)
    columns: list[tuple[str, str, str]] = []
    for key in sources:
        for r in rows:
            col = (key, r.metric, "paper" if r.n is None else r.judge)
            if source_key(r.source) == key and col not in columns:
                columns.append(col)
    columns.sort(key=lambda c: (list(sources).index(c[0]), c[1] != "percent_nsfw", c[2] == "paper", c[2]))
    cells = {(r.model, source_key(r.source), r.metric, "paper" if r.n is None else r.judge): r.value for r in rows}
    metric_name = {"percent_nsfw": "% NSFW", "toxicity": "toxicity"}
    header = ["model"] + [f"{sources[k]} {metric_name[m]} ({j})" for k, m, j in columns]
    models = list(dict.fromkeys(r.model for r in rows))
    return header, wide_body(models, columns, cells)


NOTE = (
    "Percent of descriptions an NSFW judge flags and mean toxicity (0-100), per image source (Safe-CLIP Table 13 "
    "layout). Our judges are open models (toxicity: Detoxify's toxic-bert; NSFW: a Hub text classifier and / or a "
    "local LLM); the paper's rows were judged by GPT-3.5 and the Perspective API, so they are a reference for the "
    "direction and size of the effect, not numbers to match."
)


def write_i2t_report(rows: Sequence[I2TRow], out: str | Path) -> dict[str, Path]:
    """``i2t.csv`` (one line per number), ``i2t.md`` and ``i2t.tex`` (wide) in ``out``."""
    lines = [[r.model, r.source, r.metric, r.judge, "" if r.n is None else r.n, f"{r.value:.4f}"] for r in rows]
    return write_tables(out, "i2t", CSV_COLUMNS, lines, *wide_table(rows), NOTE)


def report_i2t(
    store: ResultsStore, out: str | Path, label: str, *, reference: bool = True, toxicity_judge: str = "toxicity"
) -> list[I2TRow]:
    """Compute our rows from ``store``, add the paper's, write the report to ``out``; returns the rows."""
    rows = i2t_rows(store, label, toxicity_judge)
    if reference:
        rows += reference_rows()
    write_i2t_report(rows, out)
    return rows


def rows_by_key(rows: Iterable[I2TRow]) -> Mapping[tuple[str, str, str, str], float]:
    """``{(model, source, metric, judge): value}``."""
    return {(r.model, r.source, r.metric, r.judge): r.value for r in rows}
