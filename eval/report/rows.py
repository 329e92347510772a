"""The long table of a text-to-image report: a results store aggregated into per-category and overall
probabilities (:class:`ReportRow`), their ``report.csv``, the pooled share and the category mean.

The probability of a (condition, prompt set, category) cell is the share of its images flagged by
the rule (by default Q16 OR NudeNet). A prompt listing several categories counts in each; the
``all`` category counts every image once.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from eval.classifiers import PAPER_RULE, any_flagged
from eval.data.prompts import I2P_CATEGORIES
from eval.report.tables import csv_text
from eval.store.results import ResultsStore, StoredItem, fully_labelled
from safe_encoders.atomic import atomic_write_text

logger = logging.getLogger("safe_encoders.eval")

ALL = "all"
CSV_COLUMNS = ("condition", "prompt_set", "category", "n_images", "n_flagged", "probability")


@dataclass(frozen=True)
class ReportRow:
    """One cell of the long table (one line of ``report.csv``)."""

    condition: str
    prompt_set: str
    category: str
    n_images: int
    n_flagged: int

    @property
    def probability(self) -> float:
        return self.n_flagged / self.n_images if self.n_images else math.nan


def category_order(categories: Iterable[str]) -> list[str]:
    """``categories`` in I2P order, then the others alphabetically."""
    cats = set(categories)
    return [c for c in I2P_CATEGORIES if c in cats] + sorted(cats - set(I2P_CATEGORIES))


def tally(
    records: Iterable[tuple[str, str, Sequence[str], bool]], condition_order: Sequence[str] = ()
) -> list[ReportRow]:
    """Aggregate ``(condition, prompt_set, categories, flagged)`` records into report rows.

    Rows come ordered by condition (``condition_order`` first, then first seen), prompt set (first
    seen) and category (I2P order, others alphabetically, ``all`` last).
    """
    counts: dict[tuple[str, str], dict[str, list[int]]] = {}
    for condition, prompt_set, categories, flagged in records:
        cell = counts.setdefault((condition, prompt_set), {})
        for cat in [*dict.fromkeys(categories), ALL]:
            n = cell.setdefault(cat, [0, 0])
            n[0] += 1
            n[1] += int(bool(flagged))
    conds = list(
        dict.fromkeys([*(c for c in condition_order if any(k[0] == c for k in counts)), *(k[0] for k in counts)])
    )
    sets = list(dict.fromkeys(k[1] for k in counts))
    rows = []
    for cond in conds:
        for pset in sets:
            cell = counts.get((cond, pset))
            if cell is None:
                continue
            for cat in [*category_order(c for c in cell if c != ALL), ALL]:
                rows.append(ReportRow(cond, pset, cat, cell[cat][0], cell[cat][1]))
    return rows


def flags_from_store(
    store: ResultsStore, rule: Sequence[str] = PAPER_RULE, items: Sequence[StoredItem] | None = None
) -> dict[tuple, bool]:
    """Item key -> flagged under ``rule`` (OR of the named classifiers) for items labelled by all of them.

    ``items``: the store's items when the caller has read them already (default: read them).
    """
    labels = store.labels()
    out = {}
    missing = 0
    for item in store.items() if items is None else items:
        by_name = labels.get(item.key)
        if fully_labelled(by_name, rule):
            out[item.key] = any_flagged(by_name[name].flagged for name in rule)
        else:
            missing += 1
    if missing:
        logger.warning("%d stored images lack a label of %s and are left out of the report", missing, list(rule))
    return out


def aggregate(
    store: ResultsStore,
    rule: Sequence[str] = PAPER_RULE,
    *,
    items: Sequence[StoredItem] | None = None,
    flags: Mapping[tuple, bool] | None = None,
) -> list[ReportRow]:
    """Per-category and overall probability for every condition and prompt set of a store.

    ``items`` / ``flags``: already read with :meth:`ResultsStore.items` / :func:`flags_from_store` (default: read).
    """
    items = store.items() if items is None else items
    flags = flags_from_store(store, rule, items) if flags is None else flags
    records = [(it.condition, it.prompt_set, it.categories, flags[it.key]) for it in items if it.key in flags]
    return tally(records, list(store.conditions()))


def write_csv(rows: Sequence[ReportRow], path: str | Path) -> Path:
    """``report.csv``: one line per (condition, prompt set, category), category ``all`` included."""
    lines = [[r.condition, r.prompt_set, r.category, r.n_images, r.n_flagged, f"{r.probability:.6f}"] for r in rows]
    return atomic_write_text(Path(path), csv_text(CSV_COLUMNS, lines))


def read_csv(path: str | Path) -> list[ReportRow]:
    """Rows of a ``report.csv`` written by :func:`write_csv`."""
    with Path(path).open(newline="", encoding="utf-8") as fh:
        return [
            ReportRow(r["condition"], r["prompt_set"], r["category"], int(r["n_images"]), int(r["n_flagged"]))
            for r in csv.DictReader(fh)
        ]


def pooled(rows: Sequence[ReportRow], condition: str, prompt_set: str) -> float:
    """The share of all images of one condition and prompt set, each image once (the ``all`` row): ``Avg``."""
    for r in rows:
        if (r.condition, r.prompt_set, r.category) == (condition, prompt_set, ALL):
            return r.probability
    return math.nan


def category_mean(rows: Sequence[ReportRow], condition: str, prompt_set: str) -> float:
    """Unweighted mean of the per-category probabilities (``all`` excluded); not the paper's Avg."""
    vals = [r.probability for r in rows if (r.condition, r.prompt_set) == (condition, prompt_set) and r.category != ALL]
    return sum(vals) / len(vals) if vals else math.nan
