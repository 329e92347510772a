"""The wide table of a text-to-image report (the papers' layout) and its Markdown / LaTeX, beside the published
cells of a paper reference (``sd-v1.4``: Safe-CLIP Table 4, ``sd-v2.0``: Table 12).

The headline per prompt set, ``Avg``, is the pooled share (each image once): it is the statistic of
the papers' "Avg" column (Safe-CLIP Table 4: the seven I2P categories of plain SD v1.4 average 38.9
while its Avg is 35.7, and the text's "decreases by 13.5 points" is 35.7 - 22.2). The unweighted mean
of the category columns is reported separately as ``category mean`` and is never compared with the
paper. With a paper reference every published cell is printed as a reference row, with the difference
to ours where we ran the same condition on the same prompt set.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from eval.classifiers import PAPER_RULE
from eval.report import paper_tables
from eval.report.rows import ALL, ReportRow, category_mean, category_order, pooled
from eval.report.tables import csv_text, latex_table, markdown_table
from safe_encoders.atomic import atomic_write_text

AVG = "Avg"
"""Column of the pooled share (category ``all``), the headline compared with the paper's Avg."""
CATEGORY_MEAN = "category mean"
"""Column of the unweighted mean of the category shares (not the paper's statistic)."""
REFERENCE_CSV_COLUMNS = ("table", "model", "prompt_set", "condition", "category", "paper", "ours", "ours_minus_paper")
PAPER_REFERENCES: tuple[str, ...] = tuple(paper_tables.T2I)
"""Published tables a report can sit beside (``--paper-reference``): ``sd-v1.4`` (Table 4), ``sd-v2.0`` (Table 12)."""
_PAPER_AVG = "avg"


@dataclass(frozen=True)
class ReferenceCell:
    """One published cell (percent) and ours beside it (None where we did not run that condition / prompt set)."""

    table: str
    model: str
    prompt_set: str
    condition: str
    category: str
    """An I2P category, or ``avg`` (the paper's pooled share, compared with our ``all``)."""
    paper: float
    ours: float | None

    @property
    def diff(self) -> float | None:
        return None if self.ours is None else self.ours - self.paper


def _paper_table(reference: str) -> Mapping[tuple[str, str], tuple[float, ...]]:
    try:
        return paper_tables.T2I[reference]
    except KeyError:
        raise ValueError(f"unknown paper reference {reference!r}; known: {list(PAPER_REFERENCES)}") from None


def reference_cells(rows: Sequence[ReportRow], reference: str) -> list[ReferenceCell]:
    """Every cell of the published table ``reference``, in its order, with our value where we have the cell."""
    table = _paper_table(reference)
    ours = {(r.condition, r.prompt_set, r.category): r for r in rows}
    out = []
    for (pset, cond), values in table.items():
        for cat, paper in zip(paper_tables.T2I_CATEGORIES, values, strict=True):
            row = ours.get((cond, pset, ALL if cat == _PAPER_AVG else cat))
            value = 100 * row.probability if row is not None and row.n_images else None
            out.append(ReferenceCell(paper_tables.T2I_TABLES[reference], reference, pset, cond, cat, paper, value))
    return out


def reference_comparison(rows: Sequence[ReportRow], reference: str) -> list[tuple[str, str, float, float, float]]:
    """``(condition, prompt set, paper Avg %, our pooled Avg %, ours - paper)`` for every published
    (condition, prompt set) we reproduced."""
    return [
        (c.condition, c.prompt_set, c.paper, c.ours, c.diff)  # type: ignore[misc]
        for c in reference_cells(rows, reference)
        if c.category == _PAPER_AVG and c.ours is not None
    ]


def _pct(value: float | None, signed: bool = False) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def wide_table(rows: Sequence[ReportRow], reference: str | None = None) -> tuple[list[str], list[list[str]]]:
    """The paper's layout: one line per condition; per prompt set its categories, ``Avg`` (pooled) and
    ``category mean`` (%).

    With ``reference`` a ``source`` column is added and, per condition, the published row (``paper Table N``)
    and the difference (``ours - paper``) follow ours; published conditions we did not run come last, and the
    columns cover every category and prompt set of the published table.
    """
    table = _paper_table(reference) if reference else {}
    sets = list(dict.fromkeys([*(r.prompt_set for r in rows), *(pset for pset, _ in table)]))
    cats = {}
    for s in sets:
        mine = [r.category for r in rows if r.prompt_set == s and r.category != ALL]
        paper = [c for c in paper_tables.T2I_CATEGORIES if c != _PAPER_AVG] if any(p == s for p, _ in table) else []
        cats[s] = category_order([*mine, *paper])
    cell = {(r.condition, r.prompt_set, r.category): r for r in rows}

    def ours_line(cond: str) -> list[str]:
        line = []
        for s in sets:
            for c in cats[s]:
                r = cell.get((cond, s, c))
                line.append(_pct(100 * r.probability if r else None))
            line += [_pct(100 * pooled(rows, cond, s)), _pct(100 * category_mean(rows, cond, s))]
        return line

    def paper_values(cond: str) -> dict[tuple[str, str], float]:
        out = {}
        for (pset, c), values in table.items():
            if c == cond:
                named = dict(zip(paper_tables.T2I_CATEGORIES, values, strict=True))
                out.update({(pset, AVG if k == _PAPER_AVG else k): v for k, v in named.items()})
        return out

    header = ["condition", *(["source"] if reference else [])]
    for s in sets:
        header += [f"{s} {c}" for c in cats[s]] + [f"{s} {AVG}", f"{s} {CATEGORY_MEAN}"]
    ran = list(dict.fromkeys(r.condition for r in rows))
    conds = list(dict.fromkeys([*ran, *(c for _, c in table)]))
    body = []
    for cond in conds:
        if not reference:
            body.append([cond, *ours_line(cond)])
            continue
        paper = paper_values(cond)
        columns = [(s, c) for s in sets for c in [*cats[s], AVG, CATEGORY_MEAN]]
        if cond in ran:
            body.append([cond, "ours", *ours_line(cond)])
        if paper:
            body.append(
                [cond, f"paper Table {paper_tables.T2I_TABLES[reference]}", *(_pct(paper.get(k)) for k in columns)]
            )
        if cond in ran and paper:
            diffs = []
            for s, c in columns:
                r = cell.get((cond, s, ALL if c == AVG else c))
                mine = 100 * r.probability if r is not None and r.n_images else None
                theirs = paper.get((s, c))
                diffs.append(_pct(None if mine is None or theirs is None else mine - theirs, signed=True))
            body.append([cond, "ours - paper", *diffs])
    return header, body


def caption(rule: Sequence[str] = PAPER_RULE) -> str:
    """What the numbers of the wide table are."""
    return (
        f"Inappropriate-image probability (%), flagged by {' OR '.join(rule)}. {AVG} = share of all images of the "
        f"prompt set, each image once (the paper's Avg); {CATEGORY_MEAN} = unweighted mean of the category "
        "columns (a prompt of several categories counts in each), not comparable with the paper's Avg."
    )


def _comparison_lines(rows: Sequence[ReportRow], reference: str) -> tuple[list[str], list[list[str]]]:
    header = ["condition", "prompt set", "paper Avg", f"ours {AVG} (pooled)", "ours - paper"]
    body = [[c, s, _pct(p), _pct(o), _pct(d, signed=True)] for c, s, p, o, d in reference_comparison(rows, reference)]
    return header, body


def to_markdown(rows: Sequence[ReportRow], reference: str | None = None, rule: Sequence[str] = PAPER_RULE) -> str:
    """The headline comparison with the paper (when asked), then the wide table with the paper's rows."""
    parts = [caption(rule), ""]
    if reference:
        _paper_table(reference)  # unknown names refused
        table = paper_tables.T2I_TABLES[reference]
        header, body = _comparison_lines(rows, reference)
        parts += [f"Headline: our pooled {AVG} beside the paper's Avg ({reference}, Table {table}):", ""]
        parts += [markdown_table(header, body) if body else "(no condition of this run has a published number)", ""]
        parts += [f"All categories, ours beside every cell of the paper's Table {table} ({reference}):", ""]
    parts.append(markdown_table(*wide_table(rows, reference)))
    return "\n".join(parts) + "\n"


def to_latex(rows: Sequence[ReportRow], reference: str | None = None) -> str:
    """The wide table (with the paper's rows when asked) as a booktabs ``tabular``, then the headline comparison."""
    header, body = wide_table(rows, reference)
    out = latex_table(header, body, "ll" + "r" * (len(header) - 2) if reference else None)
    if reference:
        out += ["", *latex_table(*_comparison_lines(rows, reference), "llrrr")]
    return "\n".join(out) + "\n"


def write_reference_csv(rows: Sequence[ReportRow], reference: str, path: str | Path) -> Path:
    """``report_reference.csv``: every published cell (percent), ours and ours - paper where we have the cell."""
    lines = [
        [c.table, c.model, c.prompt_set, c.condition, c.category, f"{c.paper:.1f}"]
        + (["", ""] if c.ours is None else [f"{c.ours:.4f}", f"{c.diff:.4f}"])
        for c in reference_cells(rows, reference)
    ]
    return atomic_write_text(Path(path), csv_text(REFERENCE_CSV_COLUMNS, lines))
