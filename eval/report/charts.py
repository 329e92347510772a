"""Figures shared by the reports and the demo: grouped bar charts, one panel per table section."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.errors import require


@dataclass(frozen=True)
class BarPanel:
    """One panel of a grouped bar chart: a group of bars per x label, a bar per series in each group."""

    title: str
    groups: Sequence[str]
    series: Mapping[str, Sequence[float]]
    """Legend label -> one value per group (NaN: no bar)."""

    def __post_init__(self) -> None:
        for label, values in self.series.items():
            if len(values) != len(self.groups):
                raise ValueError(f"series {label!r} has {len(values)} values for {len(self.groups)} groups")


def grouped_bar_chart(
    panels: Sequence[BarPanel],
    path: str | Path,
    *,
    ylabel: str,
    ylim: tuple[float, float] | None = None,
    rotation: float = 20,
    feature: str = "a bar chart",
) -> Path:
    """Draw ``panels`` one above the other into the PNG ``path`` (matplotlib, headless); returns ``path``."""
    import matplotlib.pyplot as plt

    fig = draw_grouped_bars(panels, ylabel=ylabel, ylim=ylim, rotation=rotation, feature=feature)
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def draw_grouped_bars(
    panels: Sequence[BarPanel],
    *,
    ylabel: str,
    ylim: tuple[float, float] | None = None,
    rotation: float = 20,
    feature: str = "a bar chart",
) -> Any:
    """The matplotlib figure of ``grouped_bar_chart`` (the caller closes it). Each panel's legend sits to the
    right of its axes, where it cannot cover a bar."""
    matplotlib = require("matplotlib", feature=feature)
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not panels:
        raise ValueError("grouped_bar_chart: no panel to draw")
    widest = max(len(p.groups) for p in panels)
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(10, 0.9 * widest), 3.5 * len(panels)), squeeze=False)
    for ax, panel in zip(axes[:, 0], panels, strict=True):
        n = max(len(panel.series), 1)
        width = 0.8 / n
        positions = range(len(panel.groups))
        for i, (label, values) in enumerate(panel.series.items()):
            ax.bar([j + i * width for j in positions], list(values), width, label=label)
        ax.set_xticks([j + width * (n - 1) / 2 for j in positions], list(panel.groups), rotation=rotation)
        ax.set_ylabel(ylabel)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.set_title(panel.title)
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return fig
