"""Plain-text renderings of a result table (a header and rows of cells) for reports: CSV, Markdown and LaTeX."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import Any


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
