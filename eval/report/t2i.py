"""The report of a text-to-image run: ``report.csv``, ``report.md``, ``report.tex`` (and ``report_reference.csv``,
``report.png``, ``grids/``) written from a results store, with the provenance of the numbers and the tables
other commands wrote into the same folder.

The rows are :mod:`eval.report.rows`, the tables :mod:`eval.report.t2i_tables`, the figures :mod:`eval.report.figures`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from eval.classifiers import PAPER_RULE
from eval.report.figures import bar_chart, image_grid
from eval.report.rows import ReportRow, aggregate, flags_from_store, write_csv
from eval.report.t2i_tables import to_latex, to_markdown, write_reference_csv
from eval.store.results import DB_NAME, ResultsStore, path_part
from safe_encoders.atomic import atomic_write_text


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
    """Write ``report.csv``, ``report.md``, ``report.tex`` (and ``report_reference.csv`` with a paper
    ``reference``, ``report.png``, ``grids/``) next to the store."""
    out = Path(out_dir) if out_dir is not None else store.root
    out.mkdir(parents=True, exist_ok=True)
    items = store.items()
    flags = flags_from_store(store, rule, items)
    rows = aggregate(store, rule, items=items, flags=flags)
    # Atomic writes: several shard processes may finish together and all write the report.
    write_csv(rows, out / "report.csv")
    if reference:
        write_reference_csv(rows, reference, out / "report_reference.csv")
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
