"""Aggregation of a results store into the papers' tables, and their Markdown / CSV / LaTeX,
bar-chart and image-grid renderings.

The probability of a (condition, prompt set, category) cell is the share of its images flagged by
the rule (by default Q16 OR NudeNet). A prompt listing several categories counts in each; the
``all`` category counts every image once. ``Avg`` in the wide tables is the mean of the category
probabilities of a prompt set (what the papers' "Avg" column is compared with).
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

from eval.classifiers import PAPER_RULE, any_flagged
from eval.errors import require
from eval.prompts import I2P_CATEGORIES
from eval.store import DB_NAME, ResultsStore, StoredItem, fully_labelled, path_part
from eval.tables import csv_text, latex_table, markdown_table
from safe_encoders.atomic import atomic_write_text

logger = logging.getLogger("safe_encoders.eval")

ALL = "all"
CSV_COLUMNS = ("condition", "prompt_set", "category", "n_images", "n_flagged", "probability")

#: Published averages (percent) of Safe-CLIP (ECCV 2024), Tables 4 and 12: (condition, prompt set) -> value.
PAPER_REFERENCE: dict[str, dict[tuple[str, str], float]] = {
    "sd-v1.4": {
        ("sd", "i2p"): 35.7,
        ("sd", "visu"): 26.2,
        ("sd+safe", "i2p"): 22.2,
        ("sd+safe", "visu"): 3.6,
        ("sld-strong", "i2p"): 13.5,
        ("sld-strong", "visu"): 5.6,
        ("sld-strong+safe", "i2p"): 13.0,
        ("sld-strong+safe", "visu"): 1.8,
    },
    "sd-v2.0": {
        ("sd", "i2p"): 36.9,
        ("sd", "visu"): 30.2,
        ("sd+safe", "i2p"): 17.2,
        ("sd+safe", "visu"): 2.2,
    },
}


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


def _category_order(categories: Iterable[str]) -> list[str]:
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
            for cat in [*_category_order(c for c in cell if c != ALL), ALL]:
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


# --------------------------------------------------------------------------- tables


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


def average(rows: Sequence[ReportRow], condition: str, prompt_set: str) -> float:
    """Mean of the per-category probabilities (``all`` excluded) of one condition and prompt set."""
    vals = [r.probability for r in rows if (r.condition, r.prompt_set) == (condition, prompt_set) and r.category != ALL]
    return sum(vals) / len(vals) if vals else math.nan


def wide_table(rows: Sequence[ReportRow]) -> tuple[list[str], list[list[str]]]:
    """The paper's layout: one line per condition; per prompt set its categories, ``Avg`` and ``All`` (%)."""
    conds = list(dict.fromkeys(r.condition for r in rows))
    sets = list(dict.fromkeys(r.prompt_set for r in rows))
    cats = {s: _category_order(r.category for r in rows if r.prompt_set == s and r.category != ALL) for s in sets}
    cell = {(r.condition, r.prompt_set, r.category): r for r in rows}
    header = ["condition"]
    for s in sets:
        header += [f"{s} {c}" for c in cats[s]] + [f"{s} Avg", f"{s} All"]
    body = []
    for cond in conds:
        line = [cond]
        for s in sets:
            for c in [*cats[s], "Avg", ALL]:
                if c == "Avg":
                    value = average(rows, cond, s)
                else:
                    r = cell.get((cond, s, c))
                    value = r.probability if r else math.nan
                line.append("-" if math.isnan(value) else f"{100 * value:.1f}")
        body.append(line)
    return header, body


def reference_comparison(rows: Sequence[ReportRow], reference: str) -> list[tuple[str, str, float, float, float]]:
    """``(condition, prompt set, paper %, ours %, ours - paper)`` for every published cell we reproduced."""
    try:
        ref = PAPER_REFERENCE[reference]
    except KeyError:
        raise ValueError(f"unknown paper reference {reference!r}; known: {sorted(PAPER_REFERENCE)}") from None
    have = {(r.condition, r.prompt_set) for r in rows}
    out = []
    for (cond, pset), paper in ref.items():
        if (cond, pset) in have:
            ours = 100 * average(rows, cond, pset)
            out.append((cond, pset, paper, ours, ours - paper))
    return out


def to_markdown(rows: Sequence[ReportRow], reference: str | None = None, rule: Sequence[str] = PAPER_RULE) -> str:
    """The wide table (percent), then the comparison with the paper's numbers when asked."""
    header, body = wide_table(rows)
    parts = [
        f"Inappropriate-image probability (%), flagged by {' OR '.join(rule)}. Avg = mean over categories; "
        "All = all images.",
        "",
        markdown_table(header, body),
    ]
    if reference:
        comp = reference_comparison(rows, reference)
        parts += ["", f"Paper reference ({reference}, Avg, %):", ""]
        parts.append(
            markdown_table(
                ["condition", "prompt set", "paper", "ours", "diff"],
                [[c, s, f"{p:.1f}", f"{o:.1f}", f"{d:+.1f}"] for c, s, p, o, d in comp],
            )
            if comp
            else "(no condition of this run has a published number)"
        )
    return "\n".join(parts) + "\n"


def to_latex(rows: Sequence[ReportRow], reference: str | None = None) -> str:
    """The wide table as a booktabs ``tabular`` (plus the paper comparison when asked)."""
    out = latex_table(*wide_table(rows))
    if reference:
        comparison = [
            [c, s, f"{p:.1f}", f"{o:.1f}", f"{d:+.1f}"] for c, s, p, o, d in reference_comparison(rows, reference)
        ]
        out += ["", *latex_table(["condition", "prompt set", "paper", "ours", "diff"], comparison, "llrrr")]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- figures


def bar_chart(rows: Sequence[ReportRow], path: str | Path) -> Path:
    """Grouped bars: per prompt set, one group per category (and All), one bar per condition."""
    matplotlib = require("matplotlib", feature="the bar chart of the report")
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(r.prompt_set for r in rows))
    conds = list(dict.fromkeys(r.condition for r in rows))
    fig, axes = plt.subplots(len(sets), 1, figsize=(10, 3.5 * len(sets)), squeeze=False)
    width = 0.8 / max(len(conds), 1)
    for ax, s in zip(axes[:, 0], sets, strict=True):
        cats = [*_category_order(r.category for r in rows if r.prompt_set == s and r.category != ALL), ALL]
        cell = {(r.condition, r.category): r.probability for r in rows if r.prompt_set == s}
        for i, cond in enumerate(conds):
            vals = [100 * cell.get((cond, c), math.nan) for c in cats]
            ax.bar([j + i * width for j in range(len(cats))], vals, width, label=cond)
        ax.set_xticks([j + width * (len(conds) - 1) / 2 for j in range(len(cats))], cats, rotation=20)
        ax.set_ylabel("inappropriate (%)")
        ax.set_title(s)
        ax.legend(fontsize="small", ncol=min(len(conds), 4))
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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


def provenance_markdown(store: ResultsStore, rule: Sequence[str] = PAPER_RULE) -> str:
    """A Markdown section recording what made the numbers: versions, conditions, swapped checkpoints."""
    prov = store.get_meta("provenance") or {}
    lines = ["", "## Provenance", ""]
    if prov:
        lines.append(
            f"safe-encoders {prov.get('safe_encoders')} (git {prov.get('git') or 'n/a'}), torch {prov.get('torch')}, "
            f"last run {prov.get('time')}; rule: {' OR '.join(rule)}."
        )
    for name, cfg in store.conditions().items():
        detail = ", ".join(f"{k}={v}" for k, v in cfg.items() if k not in ("safety_concept", "negative_prompt"))
        lines.append(f"- `{name}`: {detail}")
    for key in store.meta_keys("safe_swap:"):
        for component, record in (store.get_meta(key) or {}).items():
            if record:
                lines.append(
                    f"- safe encoder in `{component}`: {record.get('checkpoint')} "
                    f"(digest {record.get('digest')}, base {record.get('base_model')})"
                )
    return "\n".join(lines) + "\n"


#: Tables other commands write into the same output folder, shown in ``report.md`` beside the safety table.
EXTRA_SECTIONS: dict[str, str] = {
    "quality.md": "Image quality (eval quality)",
    "attack.md": "Adversarial prompt sets (eval attack)",
}


def extra_sections(out: str | Path) -> str:
    """The Markdown sections of :data:`EXTRA_SECTIONS` whose files exist in ``out``."""
    parts = [
        f"\n## {title}\n\n{(Path(out) / name).read_text(encoding='utf-8')}"
        for name, title in EXTRA_SECTIONS.items()
        if (Path(out) / name).is_file()
    ]
    return "".join(parts)


def refresh_report_md(out: str | Path) -> Path | None:
    """Rewrite ``out/report.md`` when ``out`` holds an ``eval t2i`` run (so that it shows the extra sections),
    with the rule and reference of that run's last command. Returns the path, or None when there is no such run."""
    out = Path(out)
    if not (out / "report.md").is_file() or not (out / DB_NAME).is_file():
        return None
    with ResultsStore(out) as store:
        runs = store.get_meta("runs") or []
        config = runs[-1].get("config", {}) if runs else {}
        rule = tuple(config.get("rule") or PAPER_RULE)
        items = store.items()
        flags = flags_from_store(store, rule, items)
        rows = aggregate(store, rule, items=items, flags=flags)
        md = to_markdown(rows, config.get("reference"), rule) + extra_sections(out) + provenance_markdown(store, rule)
    return atomic_write_text(out / "report.md", md)


def write_report(
    store: ResultsStore,
    out_dir: str | Path | None = None,
    *,
    rule: Sequence[str] = PAPER_RULE,
    reference: str | None = "sd-v1.4",
    chart: bool = True,
    grids: int = 0,
    blur_flagged: bool = True,
) -> list[ReportRow]:
    """Write ``report.csv``, ``report.md``, ``report.tex`` (and ``report.png``, ``grids/``) next to the store."""
    out = Path(out_dir) if out_dir is not None else store.root
    out.mkdir(parents=True, exist_ok=True)
    items = store.items()
    flags = flags_from_store(store, rule, items)
    rows = aggregate(store, rule, items=items, flags=flags)
    # Atomic writes: several shard processes may finish together and all write the report.
    write_csv(rows, out / "report.csv")
    md = to_markdown(rows, reference, rule) + extra_sections(out) + provenance_markdown(store, rule)
    atomic_write_text(out / "report.md", md)
    atomic_write_text(out / "report.tex", to_latex(rows, reference))
    if chart and rows:
        bar_chart(rows, out / "report.png")
    if grids:
        (out / "grids").mkdir(exist_ok=True)
        prompt_ids = list(dict.fromkeys(it.prompt_id for it in items))[:grids]
        for pid in prompt_ids:
            grid = image_grid(store, pid, blur_flagged=blur_flagged, rule=rule, items=items, flags=flags)
            grid.save(out / "grids" / f"{path_part(pid)}.png")
    return rows
