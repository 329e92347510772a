"""The Moderate tab: texts (one per line) and images (several at once) -> HySAC's score, threshold and
verdict per item, and a plot of where each item sits against the model's safe / unsafe root-distance bounds."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..extras import require
from ..hysac.bounds import GROUP_NAMES
from .config import MAX_ITEMS, MAX_PROMPT_CHARS, AppError
from .models import AppModels

COLUMNS = ["#", "item", "modality", "score", "threshold", "verdict"]
# The groups drawn on each modality's row of the plot: its safe group, then its unsafe one.
ROWS = {"text": ("S", "U"), "image": ("V", "G")}


@dataclass(frozen=True)
class Verdict:
    """One item: its `score` (root distance; None when it could not be read) against `threshold`."""

    item: str
    modality: str
    score: float | None
    threshold: float
    unsafe: bool | None
    error: str = ""

    @property
    def verdict(self) -> str:
        if self.error:
            return f"not scored ({self.error}): not safe"
        return "UNSAFE" if self.unsafe else "safe"

    def row(self, number: int) -> list[Any]:
        score = "" if self.score is None else f"{self.score:.4f}"
        return [number, self.item, self.modality, score, f"{self.threshold:.4f}", self.verdict]


def split_texts(text: str | None) -> list[str]:
    """One item per non-empty line."""
    lines = [line.strip() for line in (text or "").splitlines()]
    items = [line for line in lines if line]
    too_long = [n for n, line in enumerate(items, 1) if len(line) > MAX_PROMPT_CHARS]
    if too_long:
        raise AppError(f"Text {too_long[0]} has {len(items[too_long[0] - 1]):,} characters; the limit is "
                       f"{MAX_PROMPT_CHARS:,} per line.")  # fmt: skip
    return items


def moderate(models: AppModels, text: str | None, files: list[Any] | None) -> list[Verdict]:
    """Score every text line and every file; an unreadable file is a row with its reason, never "safe"."""
    from ..moderation.collection import load_image

    texts = split_texts(text)
    paths = [Path(getattr(f, "name", f)) for f in files or []]
    if not texts and not paths:
        raise AppError("Type a text or add images first.")
    if len(texts) + len(paths) > MAX_ITEMS:
        raise AppError(f"{len(texts) + len(paths)} items; at most {MAX_ITEMS} per request.")
    hysac = models.hysac
    verdicts: list[Verdict] = []
    with models.lock:
        if texts:
            scored = hysac.unsafe_score(texts=texts).text
            verdicts += [
                Verdict(t, "text", float(s), scored.threshold, bool(u))
                for t, s, u in zip(texts, scored.scores.tolist(), scored.unsafe.tolist(), strict=True)
            ]
        images, names, unreadable = [], [], []
        for path in paths:
            try:
                images.append(load_image(path))
                names.append(path.name)
            except Exception as error:  # any decoding failure: reported in the row, never scored as safe
                reason = str(error).replace(str(path), path.name)  # not the server's upload folder
                unreadable.append(Verdict(path.name, "image", None, hysac.threshold("image"), None,
                                          f"unreadable: {type(error).__name__}: {reason}"))  # fmt: skip
        if images:
            scored = hysac.unsafe_score(images=images).image
            verdicts += [
                Verdict(n, "image", float(s), scored.threshold, bool(u))
                for n, s, u in zip(names, scored.scores.tolist(), scored.unsafe.tolist(), strict=True)
            ]
        verdicts += unreadable
    return verdicts


def bounds_figure(models: AppModels, verdicts: list[Verdict]) -> Any:
    """Per modality, the safe and unsafe groups' 5-95 % root-distance ranges, the threshold, and the items."""
    require("matplotlib", "app", feature="the Moderate tab's plot")
    from matplotlib.figure import Figure

    bounds = models.hysac.bounds
    figure = Figure(figsize=(8, 3.2), layout="constrained")
    axes = figure.add_subplot()
    for row, (modality, groups) in enumerate(ROWS.items()):
        for offset, group in zip((-0.18, 0.18), groups, strict=True):
            stats = bounds.stats.get(group)
            if not stats:
                continue
            low = stats.get("low_5", stats.get("min", stats.get("mean")))
            high = stats.get("up_95", stats.get("max", stats.get("mean")))
            if low is None or high is None:
                continue
            colour = "tab:green" if group in ("S", "V") else "tab:red"
            axes.barh(row + offset, high - low, left=low, height=0.3, color=colour, alpha=0.35,
                      label=f"{group}: {GROUP_NAMES[group]} (5-95 %)")  # fmt: skip
        if bounds.has_threshold(modality):  # type: ignore[arg-type]
            threshold = bounds.threshold(modality)  # type: ignore[arg-type]
            axes.vlines(threshold, row - 0.45, row + 0.45, colors="black", linestyles="dashed")
        for number, verdict in enumerate(verdicts, 1):
            if verdict.modality == modality and verdict.score is not None and math.isfinite(verdict.score):
                axes.plot(verdict.score, row, marker="o", color="darkred" if verdict.unsafe else "darkgreen")
                axes.annotate(str(number), (verdict.score, row), textcoords="offset points", xytext=(0, 7),
                              ha="center", fontsize=8)  # fmt: skip
    axes.set_yticks(range(len(ROWS)), list(ROWS))
    axes.set_ylim(-0.6, len(ROWS) - 0.4)
    axes.set_xlabel("distance from the root (dashed: threshold; dots: the items, by number)")
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    return figure


# ------------------------------------------------------------------------------------------------- page


def build_tab(models: AppModels) -> None:
    """The tab's components and events (inside the caller's `gr.Blocks` / `gr.Tab`)."""
    import gradio as gr

    from .server import error_text, ok_text

    with gr.Row():
        text = gr.Textbox(label="Texts (one per line)", lines=4, elem_id="moderate-text")
        files = gr.File(label="Images (several at once)", file_count="multiple", type="filepath",
                        elem_id="moderate-files")  # fmt: skip
    button = gr.Button("Moderate", variant="primary", elem_id="moderate-run")
    status = gr.Markdown(elem_id="moderate-status")
    table = gr.Dataframe(headers=COLUMNS, label="HySAC per item", interactive=False, elem_id="moderate-table",
                         wrap=True)  # fmt: skip
    plot = gr.Plot(label="Where each item sits against the model's bounds", elem_id="moderate-plot")

    def run(text_: str, files_: list[Any] | None, progress=gr.Progress()) -> list:  # noqa: B008
        progress(0.0, desc="scoring with HySAC")
        try:
            verdicts = moderate(models, text_, files_)
            figure = bounds_figure(models, verdicts)
        except Exception as error:  # shown in the page; the server carries on
            return [error_text(error), gr.update(), gr.update()]
        unsafe = sum(v.unsafe is True for v in verdicts)
        unread = sum(v.score is None for v in verdicts)
        summary = f"{len(verdicts)} items: {unsafe} unsafe, {len(verdicts) - unsafe - unread} safe"
        summary += f", {unread} not scored" if unread else ""
        return [ok_text(summary), [v.row(n) for n, v in enumerate(verdicts, 1)], figure]

    button.click(run, [text, files], [status, table, plot], api_name="moderate")
