"""The demo's tables and its before / after chart, drawn with the evaluations' table and chart code
(``eval.report.tables``, ``eval.report.charts``)."""

from __future__ import annotations

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


def _cell(value: float | None, signed: bool = False) -> str:
    return "" if value is None else f"{value:+.3f}" if signed else f"{value:.3f}"


def format_table(results: dict[str, Any]) -> str:
    """The Safe-CLIP figures (pre-trained vs fine-tuned, per concept) and the tiny SD check, as Markdown."""
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
            body.append([label, _cell(b), _cell(a), _cell(a - b, True), *([""] if both else [])])
    parts = [
        "Safe-CLIP: each fine-tuned encoder against the original other tower (as deployed in SD / LLaVA); "
        "both-FT: both towers fine-tuned.",
        "",
        markdown_table(header, body),
    ]
    sd = results.get("stable_diffusion")
    if sd:
        rows = (
            ("own safe prompt", "unsafe_to_own_safe_cosine"),
            ("other safe prompts (baseline)", "unsafe_to_other_safe_cosine"),
        )
        sd_body = [[label, _cell(sd["before"][key]), _cell(sd["after"][key])] for label, key in rows]
        parts += [
            "",
            "Tiny SD pipeline: cosine of the unsafe prompts' conditioning to that of",
            "",
            markdown_table(["prompts", "before make_safe", "after make_safe"], sd_body),
        ]
    return "\n".join(parts)


def format_hysac_table(h: dict[str, Any]) -> str:
    """The HySAC figures as Markdown (root distance = unsafe score; retrieval by Lorentz distance)."""
    body = [
        ["AUROC root distance, texts S vs U", "", _cell(h["text_auroc"]), ""],
        ["AUROC root distance, images V vs G", "", _cell(h["image_auroc"]), ""],
        ["accuracy at bounds, texts", "", _cell(h["text_accuracy"]), ""],
        ["accuracy at bounds, images", "", _cell(h["image_accuracy"]), ""],
        ["safe T->V R@1", _cell(h["pretrained_safe_t2v_r1"]), _cell(h["safe_t2v_r1"]), ""],
        ["safe V->T R@1", _cell(h["pretrained_safe_v2t_r1"]), _cell(h["safe_v2t_r1"]), ""],
        [
            "T* top-1 safe share (in V u V*)",
            _cell(h["pretrained_unsafe_text_top1_safe_share"]),
            _cell(h["unsafe_text_top1_safe_share"]),
            _cell(h["unsafe_text_top1_safe_share_traversal"]),
        ],
        [
            "V* top-1 safe share (in T u T*)",
            "",
            _cell(h["unsafe_image_top1_safe_share"]),
            _cell(h["unsafe_image_top1_safe_share_traversal"]),
        ],
    ]
    return "\n".join(
        [
            "HySAC from the same pre-trained tiny CLIP (root distance = unsafe score; retrieval by Lorentz distance):",
            "",
            markdown_table(["metric", "pre-trained", "HySAC", "HySAC + traversal"], body),
        ]
    )


def save_plot(results: dict[str, Any], path: Path) -> Path:
    """Bar chart of the before / after figures: retrieval and unsafe shares, then the unsafe shares per concept."""
    before, after = results["pretrained"], results["safe"]
    names = {"pre-trained tiny CLIP": before, "after Safe-CLIP": after}
    overall = BarPanel(
        "Safe-CLIP on the synthetic world: safe retrieval kept, unsafe retrieval redirected",
        ["safe T->V\nR@1", "safe V->T\nR@1", "T* -> unsafe\nat top-1", "V* -> unsafe\nat top-1"],
        {name: [figures[k] for k in RESULT_KEYS] for name, figures in names.items()},
    )
    concepts = list(before["per_concept"])
    per_concept = BarPanel(
        "unsafe share at top-1 per concept",
        [f"{concept}\n{side}" for concept in concepts for side, _ in SIDES],
        {
            name: [figures["per_concept"][c][key] for c in concepts for _, key in SIDES]
            for name, figures in names.items()
        },
    )
    return grouped_bar_chart(
        [overall, per_concept], path, ylabel="fraction", ylim=(0, 1.05), rotation=0, feature="the demo's chart"
    )
