"""``vlm_bench.{csv,md,tex}``: one row per condition and the difference row (last condition minus the first), one
column per (task, metric) lmms-eval reported; the numbers are lmms-eval's aggregated metrics as it returned them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval.report.tables import write_tables


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _plain(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def table(records: Sequence[dict[str, Any]]) -> tuple[list[str], list[tuple[str, str]], dict[str, dict]]:
    """The conditions in order, the (task, metric) columns (those every condition reported), and
    ``{condition: {(task, metric): value}}``."""
    conditions = list(dict.fromkeys(r["condition"] for r in records))
    cells: dict[str, dict[tuple[str, str], float | None]] = {c: {} for c in conditions}
    for r in records:
        for task, metrics in r["metrics"].items():
            for metric, value in metrics.items():
                cells[r["condition"]][(task, metric)] = value
    seen = dict.fromkeys(k for c in conditions for k in cells[c])
    columns = [k for k in seen if all(k in cells[c] for c in conditions)]
    return conditions, columns, cells


def difference_name(conditions: Sequence[str]) -> str | None:
    return f"{conditions[-1]} - {conditions[0]}" if len(conditions) > 1 else None


def write_report(records: Sequence[dict[str, Any]], out: Path) -> dict[str, Path]:
    conditions, columns, cells = table(records)
    diff = difference_name(conditions)
    rows = {c: {k: cells[c][k] for k in columns} for c in conditions}
    if diff:
        first, last = cells[conditions[0]], cells[conditions[-1]]
        rows[diff] = {k: None if first[k] is None or last[k] is None else last[k] - first[k] for k in columns}
    lines = [[name, task, metric, _plain(values[(task, metric)])]
             for name, values in rows.items() for task, metric in columns]  # fmt: skip
    header = ["condition", *(f"{task} {metric}" for task, metric in columns)]
    body = [[name, *(_fmt(values[k]) for k in columns)] for name, values in rows.items()]
    note = (
        "lmms-eval's metrics of LLaVA with the stock and the Safe-CLIP vision tower (model llava_hf_safe; each "
        "metric on lmms-eval's own scale)" + (f"; the last row is {diff}." if diff else ".")
    )
    return write_tables(out, "vlm_bench", ["condition", "task", "metric", "value"], lines, header, body, note)
