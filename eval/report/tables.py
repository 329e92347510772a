"""Plain-text renderings of a result table (a header and rows of cells) for reports: CSV, Markdown and LaTeX."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from safe_encoders.atomic import atomic_write_text


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A CSV document (``\\n`` line ends) with a header line."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def latex_escape(text: str) -> str:
    """``text`` with the characters LaTeX would read as commands escaped."""
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        text = text.replace(a, b)
    return text


def latex_table(header: Sequence[str], body: Sequence[Sequence[str]], align: str | None = None) -> list[str]:
    """A booktabs ``tabular`` as lines; ``align`` defaults to one left column, then right-aligned ones."""
    align = align or "l" + "r" * (len(header) - 1)
    lines = [rf"\begin{{tabular}}{{{align}}}", r"\toprule", " & ".join(latex_escape(h) for h in header) + r" \\"]
    lines += [r"\midrule", *(" & ".join(latex_escape(c) for c in row) + r" \\" for row in body)]
    return [*lines, r"\bottomrule", r"\end{tabular}"]


def wide_body(
    models: Sequence[str], columns: Sequence[tuple[str, ...]], cells: Mapping[tuple[str, ...], float]
) -> list[list[str]]:
    """One line per model: its cell ``(model, *column)`` of each column with one decimal, ``-`` where it has none."""
    return [[m] + [f"{cells[(m, *c)]:.1f}" if (m, *c) in cells else "-" for c in columns] for m in models]


def write_tables(
    out: str | Path,
    stem: str,
    csv_columns: Sequence[str],
    lines: Iterable[Sequence[Any]],
    header: Sequence[str],
    body: Sequence[Sequence[str]],
    note: str,
) -> dict[str, Path]:
    """``STEM.csv`` (the long table: ``csv_columns`` and ``lines``), ``STEM.md`` (``note``, then the wide table
    ``header`` / ``body``) and ``STEM.tex`` (the wide table) in ``out``, each written atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return {
        "csv": atomic_write_text(out / f"{stem}.csv", csv_text(csv_columns, lines)),
        "md": atomic_write_text(out / f"{stem}.md", f"{note}\n\n{markdown_table(header, body)}\n"),
        "tex": atomic_write_text(out / f"{stem}.tex", "\n".join(latex_table(header, body)) + "\n"),
    }
