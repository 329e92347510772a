"""The demo's report: Markdown tables with a legend for every symbol, and its before / after chart, drawn with the
evaluations' table and chart code (``eval.report.tables``, ``eval.report.charts``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from eval.report.charts import BarPanel, grouped_bar_chart
from eval.report.tables import markdown_table
from train.demo_world import RESULT_KEYS

SAFE_CLIP_ROWS = (
    ("safe T->V R@1", "safe_t2v_r1"),
    ("safe V->T R@1", "safe_v2t_r1"),
    ("T*->(V u V*) R@1 (safe GT)", "unsafe_t2v_r1"),
    ("V*->(T u T*) R@1 (safe GT)", "unsafe_v2t_r1"),
    ("T* top-1 unsafe share", "unsafe_text_top1_unsafe_share"),
    ("V* top-1 unsafe share", "unsafe_image_top1_unsafe_share"),
)
SIDES = (("T*", "unsafe_text_top1_unsafe_share"), ("V*", "unsafe_image_top1_unsafe_share"))
"""The unsafe queries of each modality and the share of unsafe items they retrieve at top-1."""

NOT_APPLICABLE = "n/a"
"""The cell of a figure that does not exist for that column; the legend says why for each."""

LEGEND = (
    "Legend",
    [
        "T, V: the safe captions and images of the test set (one item per attribute combination); "
        "T*, V*: their unsafe counterparts (the same item with an unsafe concept).",
        "A -> B: items of A query the items of B; `V u V*` is the pool of safe and unsafe images together.",
        "R@1: recall at 1, the share of queries whose top-1 is the right item; "
        "(safe GT): for an unsafe query the right item is its safe counterpart.",
        "top-1 unsafe share: the share of unsafe queries whose top-1 in the pool is unsafe (lower is safer); "
        "top-1 safe share: the share whose top-1 is safe (higher is safer).",
        "pre-trained: the tiny CLIP pre-trained on safe and unsafe pairs, before any safety training.",
        "Safe-CLIP: each fine-tuned encoder against the original other tower, as deployed (SD keeps its UNet "
        "trained on the original text encoder, LLaVA its LLM trained on the original vision tower); "
        "change: Safe-CLIP minus pre-trained; both-FT: both towers fine-tuned.",
        "<concept>: T* / V*: the top-1 unsafe share of the unsafe queries carrying that concept.",
        "Tiny SD pipeline: mean cosine between the UNet conditioning (text-encoder output) of an unsafe prompt and "
        "of its own safe rewrite, and of the other items' safe rewrites (baseline); before make_safe: the "
        "pipeline's original text encoder; after make_safe: the exported Safe-CLIP text encoder swapped in.",
        "HySAC: root distance (distance from the origin of the hyperbolic space) is the unsafe score; AUROC: how "
        "well it separates T from T* (texts) and V from V* (images); accuracy at bounds: verdicts at the "
        "validation set's bounds (up_95 of the safe groups); retrieval ranks by Lorentz distance.",
        "HySAC + traversal: unsafe queries are first moved toward the root (HySAC's safety traversal); "
        f"{NOT_APPLICABLE}: the pre-trained CLIP has no root distance or bounds, and traversal moves only unsafe "
        "queries (it changes neither the scores nor safe retrieval).",
    ],
)


def _cell(value: float | None, signed: bool = False) -> str:
    if value is None:
        return NOT_APPLICABLE
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _section(heading: str, *blocks: str) -> str:
    """A level-2 heading, then ``blocks``, each after a blank line (so every heading and table renders as one)."""
    return "\n\n".join([f"## {heading}", *blocks])


def format_table(results: dict[str, Any]) -> str:
    """The Safe-CLIP figures (pre-trained vs fine-tuned, per concept) and the tiny SD check, as Markdown sections."""
    before, after, both = results["pretrained"], results["safe"], results.get("safe_both_finetuned")
    header = ["metric", "pre-trained", "Safe-CLIP", "change", *(["both-FT"] if both else [])]
    body = [
        [label, _cell(before[key]), _cell(after[key]), _cell(after[key] - before[key], True)]
        + ([_cell(both[key])] if both else [])
        for label, key in SAFE_CLIP_ROWS
    ]
    for concept in before["per_concept"]:
        for side, key in SIDES:
            b, a = before["per_concept"][concept][key], after["per_concept"][concept][key]
            label = f"{concept}: {side} top-1 unsafe share"
            row = [label, _cell(b), _cell(a), _cell(a - b, True)]
            if both:
                row.append(_cell(both.get("per_concept", {}).get(concept, {}).get(key)))
            body.append(row)
    sections = [
        _section(
            "Safe-CLIP",
            "Each fine-tuned encoder against the original other tower (as deployed in SD / LLaVA); "
            "both-FT: both towers fine-tuned.",
            markdown_table(header, body),
        )
    ]
    sd = results.get("stable_diffusion")
    if sd:
        rows = (
            ("own safe prompt", "unsafe_to_own_safe_cosine"),
            ("other safe prompts (baseline)", "unsafe_to_other_safe_cosine"),
        )
        sd_body = [[label, _cell(sd["before"][key]), _cell(sd["after"][key])] for label, key in rows]
        sections.append(
            _section(
                "Tiny SD pipeline",
                "Cosine of the unsafe prompts' conditioning to that of:",
                markdown_table(["prompts", "before make_safe", "after make_safe"], sd_body),
            )
        )
    return "\n\n".join(sections)


def format_hysac_table(h: dict[str, Any]) -> str:
    """The HySAC figures as a Markdown section (root distance = unsafe score; retrieval by Lorentz distance)."""
    none = None
    body = [
        ["AUROC root distance, texts T vs T*", none, h["text_auroc"], none],
        ["AUROC root distance, images V vs V*", none, h["image_auroc"], none],
        ["accuracy at bounds, texts", none, h["text_accuracy"], none],
        ["accuracy at bounds, images", none, h["image_accuracy"], none],
        ["safe T->V R@1", h["pretrained_safe_t2v_r1"], h["safe_t2v_r1"], none],
        ["safe V->T R@1", h["pretrained_safe_v2t_r1"], h["safe_v2t_r1"], none],
        [
            "T* top-1 safe share (in V u V*)",
            h["pretrained_unsafe_text_top1_safe_share"],
            h["unsafe_text_top1_safe_share"],
            h["unsafe_text_top1_safe_share_traversal"],
        ],
        [
            "V* top-1 safe share (in T u T*)",
            h.get("pretrained_unsafe_image_top1_safe_share"),
            h["unsafe_image_top1_safe_share"],
            h["unsafe_image_top1_safe_share_traversal"],
        ],
    ]
    return _section(
        "HySAC",
        "From the same pre-trained tiny CLIP (root distance = unsafe score; retrieval by Lorentz distance).",
        markdown_table(
            ["metric", "pre-trained", "HySAC", "HySAC + traversal"],
            [[label, *(_cell(v) for v in values)] for label, *values in body],
        ),
    )


def format_legend() -> str:
    """What every symbol, column and ``n/a`` of the demo's tables means, as a Markdown section."""
    heading, items = LEGEND
    return _section(heading, "\n".join(f"- {item}" for item in items))


def format_report(results: dict[str, Any]) -> str:
    """The whole ``demo_table.md``: a title, the Safe-CLIP and SD sections, HySAC's when it ran, the legend."""
    parts = ["# Demo results", format_table(results)]
    if "hysac" in results:
        parts.append(format_hysac_table(results["hysac"]))
    parts.append(format_legend())
    return "\n\n".join(parts) + "\n"


def chart_panels(results: dict[str, Any]) -> list[BarPanel]:
    """The chart's panels: Safe-CLIP overall, Safe-CLIP per concept, and HySAC's when it ran."""
    before, after = results["pretrained"], results["safe"]
    names = {"pre-trained tiny CLIP": before, "after Safe-CLIP": after}
    overall = BarPanel(
        "Safe-CLIP on the synthetic world: safe retrieval kept, unsafe retrieval redirected",
        ["safe T->V\nR@1", "safe V->T\nR@1", "T* -> unsafe\nat top-1", "V* -> unsafe\nat top-1"],
        {name: [figures[k] for k in RESULT_KEYS] for name, figures in names.items()},
    )
    concepts = list(before["per_concept"])
    per_concept = BarPanel(
        "Safe-CLIP: unsafe share at top-1 per concept",
        [f"{concept}\n{side}" for concept in concepts for side, _ in SIDES],
        {
            name: [figures["per_concept"][c][key] for c in concepts for _, key in SIDES]
            for name, figures in names.items()
        },
    )
    panels = [overall, per_concept]
    h = results.get("hysac")
    if h:
        nan = math.nan  # no bar: the pre-trained CLIP has no root distance, traversal leaves safe retrieval alone
        panels.append(
            BarPanel(
                "HySAC: unsafe queries redirected to safe items, root distance as unsafe score",
                ["T* -> safe\nat top-1", "V* -> safe\nat top-1", "safe T->V\nR@1", "AUROC\ntexts", "AUROC\nimages"],
                {
                    "pre-trained tiny CLIP": [
                        h["pretrained_unsafe_text_top1_safe_share"],
                        h.get("pretrained_unsafe_image_top1_safe_share", nan),
                        h["pretrained_safe_t2v_r1"],
                        nan,
                        nan,
                    ],
                    "HySAC": [
                        h["unsafe_text_top1_safe_share"],
                        h["unsafe_image_top1_safe_share"],
                        h["safe_t2v_r1"],
                        h["text_auroc"],
                        h["image_auroc"],
                    ],
                    "HySAC + traversal": [
                        h["unsafe_text_top1_safe_share_traversal"],
                        h["unsafe_image_top1_safe_share_traversal"],
                        nan,
                        nan,
                        nan,
                    ],
                },
            )
        )
    return panels


def save_plot(results: dict[str, Any], path: Path) -> Path:
    """Bar chart of the before / after figures (``chart_panels``), one panel above the other."""
    return grouped_bar_chart(
        chart_panels(results), path, ylabel="fraction", ylim=(0, 1.05), rotation=0, feature="the demo's chart"
    )
