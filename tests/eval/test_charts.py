"""The shared grouped bar chart (reports and the demo draw through it)."""

import numpy as np
import pytest
from PIL import Image

from eval.report.charts import BarPanel, grouped_bar_chart


def test_series_must_have_a_value_per_group():
    with pytest.raises(ValueError, match="'x' has 1 values for 2 groups"):
        BarPanel("p", ["a", "b"], {"x": [0.5]})


def test_bars_stand_over_their_own_group(tmp_path):
    """A full bar over the first group and none over the second: the first half of the plot holds the bar's
    colour (matplotlib's first colour, C0) in a tall column, the second half does not."""
    panel = BarPanel("p", ["full", "empty"], {"x": [1.0, 0.0]})
    path = grouped_bar_chart([panel], tmp_path / "chart.png", ylabel="share", ylim=(0, 1))
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    c0 = np.array([0x1F, 0x77, 0xB4])
    is_bar = (np.abs(pixels - c0).sum(axis=-1) < 30).sum(axis=0)  # bar-coloured pixels per column
    half = pixels.shape[1] // 2
    assert is_bar[:half].max() > 0.5 * pixels.shape[0]
    assert is_bar[half:].max() < 0.05 * pixels.shape[0]  # at most the legend's swatch


def test_no_panel_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no panel"):
        grouped_bar_chart([], tmp_path / "x.png", ylabel="y")
