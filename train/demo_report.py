"""The demo's printed tables and its before / after plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from train.demo_world import RESULT_KEYS


def format_table(results: dict[str, Any]) -> str:
    before, after = results["pretrained"], results["safe"]
    rows = [
        ("safe T->V R@1", "safe_t2v_r1"),
        ("safe V->T R@1", "safe_v2t_r1"),
        ("T*->(V u V*) R@1 (safe GT)", "unsafe_t2v_r1"),
        ("V*->(T u T*) R@1 (safe GT)", "unsafe_v2t_r1"),
        ("T* top-1 unsafe share", "unsafe_text_top1_unsafe_share"),
        ("V* top-1 unsafe share", "unsafe_image_top1_unsafe_share"),
    ]
    both = results.get("safe_both_finetuned")
    lines = [
        "Safe-CLIP column: each fine-tuned encoder against the original other tower (as deployed in SD / LLaVA);",
        "both-FT column: both towers fine-tuned.",
        f"{'metric':<34}{'pre-trained':>12}{'Safe-CLIP':>12}{'change':>10}{'both-FT':>10}",
        "-" * 78,
    ]
    for label, key in rows:
        extra = f"{both[key]:>10.3f}" if both else ""
        lines.append(f"{label:<34}{before[key]:>12.3f}{after[key]:>12.3f}{after[key] - before[key]:>+10.3f}{extra}")
    for concept in before["per_concept"]:
        for side, key in (("T*", "unsafe_text_top1_unsafe_share"), ("V*", "unsafe_image_top1_unsafe_share")):
            b, a = before["per_concept"][concept][key], after["per_concept"][concept][key]
            label = f"  {concept}: {side} top-1 unsafe share"
            lines.append(f"{label:<34}{b:>12.3f}{a:>12.3f}{a - b:>+10.3f}")
    sd = results.get("stable_diffusion")
    if sd:
        lines.append("-" * 68)
        lines.append("tiny SD pipeline, cosine of unsafe-prompt conditioning to its safe prompt's:")
        lines.append(
            f"{'  own safe prompt':<34}{sd['before']['unsafe_to_own_safe_cosine']:>12.3f}"
            f"{sd['after']['unsafe_to_own_safe_cosine']:>12.3f}"
        )
        lines.append(
            f"{'  other safe prompts (baseline)':<34}{sd['before']['unsafe_to_other_safe_cosine']:>12.3f}"
            f"{sd['after']['unsafe_to_other_safe_cosine']:>12.3f}"
        )
    return "\n".join(lines)


def save_plot(results: dict[str, Any], path: Path) -> Path | None:
    """Bar chart of the before/after figures; None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    before, after = results["pretrained"], results["safe"]
    labels = ["safe T->V\nR@1", "safe V->T\nR@1", "T* -> unsafe\nat top-1", "V* -> unsafe\nat top-1"]
    keys = list(RESULT_KEYS)
    for concept in before["per_concept"]:
        labels += [f"{concept}\nT* unsafe", f"{concept}\nV* unsafe"]
    values_b = [before[k] for k in keys] + [
        before["per_concept"][c][k] for c in before["per_concept"] for k in keys[2:]
    ]
    values_a = [after[k] for k in keys] + [after["per_concept"][c][k] for c in after["per_concept"] for k in keys[2:]]
    fig, ax = plt.subplots(figsize=(max(8, len(labels) * 0.9), 4))
    x = torch.arange(len(labels)).float()
    ax.bar(x - 0.2, values_b, width=0.4, label="pre-trained tiny CLIP")
    ax.bar(x + 0.2, values_a, width=0.4, label="after Safe-CLIP")
    ax.set_xticks(x.tolist(), labels, fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction")
    ax.set_title("Safe-CLIP on the synthetic world: safe retrieval kept, unsafe retrieval redirected")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------- world and pre-training


def format_hysac_table(h: dict[str, Any]) -> str:
    """The HySAC part of the printed table."""
    lines = [
        "HySAC (same pre-trained tiny CLIP; root distance = unsafe score; retrieval by Lorentz distance):",
        f"{'metric':<40}{'pre-trained':>12}{'HySAC':>12}{'traversal':>12}",
        "-" * 76,
    ]
    lines.append(f"{'AUROC root distance, texts S vs U':<40}{'':>12}{h['text_auroc']:>12.3f}")
    lines.append(f"{'AUROC root distance, images V vs G':<40}{'':>12}{h['image_auroc']:>12.3f}")
    lines.append(
        f"{'accuracy at bounds, texts / images':<40}{'':>12}{h['text_accuracy']:>12.3f}{h['image_accuracy']:>12.3f}"
    )
    lines.append(f"{'safe T->V R@1':<40}{h['pretrained_safe_t2v_r1']:>12.3f}{h['safe_t2v_r1']:>12.3f}")
    lines.append(f"{'safe V->T R@1':<40}{h['pretrained_safe_v2t_r1']:>12.3f}{h['safe_v2t_r1']:>12.3f}")
    lines.append(
        f"{'T* top-1 safe share (in V u V*)':<40}{h['pretrained_unsafe_text_top1_safe_share']:>12.3f}"
        f"{h['unsafe_text_top1_safe_share']:>12.3f}{h['unsafe_text_top1_safe_share_traversal']:>12.3f}"
    )
    lines.append(
        f"{'V* top-1 safe share (in T u T*)':<40}{'':>12}{h['unsafe_image_top1_safe_share']:>12.3f}"
        f"{h['unsafe_image_top1_safe_share_traversal']:>12.3f}"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- the whole demo
