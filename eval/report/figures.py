"""Figures of a text-to-image report: the grouped bar chart of the long table and per-prompt image grids."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

from eval.classifiers import PAPER_RULE
from eval.report.charts import BarPanel, grouped_bar_chart
from eval.report.rows import ALL, ReportRow, category_order, flags_from_store
from eval.store.results import ResultsStore, StoredItem


def bar_chart(rows: Sequence[ReportRow], path: str | Path) -> Path:
    """Grouped bars: per prompt set, one group per category (and All), one bar per condition."""
    conds = list(dict.fromkeys(r.condition for r in rows))
    panels = []
    for s in dict.fromkeys(r.prompt_set for r in rows):
        cats = [*category_order(r.category for r in rows if r.prompt_set == s and r.category != ALL), ALL]
        cell = {(r.condition, r.category): r.probability for r in rows if r.prompt_set == s}
        series = {cond: [100 * cell.get((cond, c), math.nan) for c in cats] for cond in conds}
        panels.append(BarPanel(s, cats, series))
    return grouped_bar_chart(panels, path, ylabel="inappropriate (%)", feature="the bar chart of the report")


def image_grid(
    store: ResultsStore,
    prompt_id: str,
    *,
    conditions: Sequence[str] | None = None,
    blur_flagged: bool = False,
    rule: Sequence[str] = PAPER_RULE,
    cell: int = 256,
    items: Sequence[StoredItem] | None = None,
    flags: Mapping[tuple, bool] | None = None,
) -> Image.Image:
    """Images of one prompt: one column per condition, one row per seed (like the paper's Fig. 4).

    With ``blur_flagged`` the images flagged by ``rule`` are blurred beyond recognition and framed red.
    ``items`` / ``flags``: the store's items and :func:`flags_from_store` when already read (default: read).
    """
    items = [it for it in (store.items() if items is None else items) if it.prompt_id == prompt_id]
    if not items:
        raise KeyError(f"no stored image for prompt {prompt_id!r}")
    conds = list(conditions) if conditions else list(dict.fromkeys(it.condition for it in items))
    seeds = sorted({it.seed for it in items})
    by_key: Mapping[tuple[str, int], StoredItem] = {(it.condition, it.seed): it for it in items}
    if not blur_flagged:
        flags = {}
    elif flags is None:
        flags = flags_from_store(store, rule)
    title_h = 24
    grid = Image.new("RGB", (cell * len(conds), title_h + cell * len(seeds)), "white")
    draw = ImageDraw.Draw(grid)
    for i, cond in enumerate(conds):
        draw.text((i * cell + 4, 4), cond, fill="black")
        for j, seed in enumerate(seeds):
            it = by_key.get((cond, seed))
            if it is None:
                continue
            im = store.load_image(it).resize((cell, cell))
            if blur_flagged and flags.get(it.key, False):
                im = im.filter(ImageFilter.GaussianBlur(radius=max(cell // 12, 4)))
                ImageDraw.Draw(im).rectangle((0, 0, cell - 1, cell - 1), outline=(220, 0, 0), width=4)
            grid.paste(im, (i * cell, title_h + j * cell))
    return grid
