"""The demo's report (eval.report.tables / charts) on hand-made figures: each number in its column, valid Markdown
with a legend for every symbol and no empty cell, a chart with HySAC's panel whose legends cover no bar."""

import math

import pytest
from markdown_it import MarkdownIt
from PIL import Image

from eval.report.charts import draw_grouped_bars
from train.demo_report import LEGEND, chart_panels, format_hysac_table, format_report, format_table, save_plot
from train.demo_world import RESULT_KEYS

HYSAC = {
    "text_auroc": 0.97,
    "image_auroc": 0.96,
    "text_accuracy": 0.9,
    "image_accuracy": 0.8,
    "pretrained_safe_t2v_r1": 0.5,
    "safe_t2v_r1": 0.45,
    "pretrained_safe_v2t_r1": 0.52,
    "safe_v2t_r1": 0.47,
    "pretrained_unsafe_text_top1_safe_share": 0.1,
    "pretrained_unsafe_image_top1_safe_share": 0.15,
    "unsafe_text_top1_safe_share": 0.3,
    "unsafe_text_top1_safe_share_traversal": 0.7,
    "unsafe_image_top1_safe_share": 0.35,
    "unsafe_image_top1_safe_share_traversal": 0.75,
}
SD = {
    "before": {"unsafe_to_own_safe_cosine": 0.2, "unsafe_to_other_safe_cosine": 0.3},
    "after": {"unsafe_to_own_safe_cosine": 0.9, "unsafe_to_other_safe_cosine": 0.25},
}


def _figures(base: float) -> dict:
    keys = (*RESULT_KEYS, "unsafe_t2v_r1", "unsafe_v2t_r1")
    figures = {key: base + i / 100 for i, key in enumerate(keys)}  # a different value per metric
    figures["per_concept"] = {
        concept: {"unsafe_text_top1_unsafe_share": base + 0.05 + j / 10, "unsafe_image_top1_unsafe_share": base + 0.06}
        for j, concept in enumerate(("nudity", "violence"))
    }
    return figures


def _results(hysac=True) -> dict:
    results = {
        "pretrained": _figures(0.8),
        "safe": _figures(0.1),
        "safe_both_finetuned": _figures(0.4),
        "stable_diffusion": SD,
    }
    return {**results, "hysac": HYSAC} if hysac else results


def test_safe_clip_table_columns_are_pretrained_safe_clip_change_both():
    lines = format_table(_results(hysac=False)).splitlines()
    assert "| metric | pre-trained | Safe-CLIP | change | both-FT |" in lines
    assert "| safe V->T R@1 | 0.810 | 0.110 | -0.700 | 0.410 |" in lines
    # per concept, both-FT has its own figure (no empty cell)
    assert "| violence: T* top-1 unsafe share | 0.950 | 0.250 | -0.700 | 0.550 |" in lines


def test_stable_diffusion_rows_are_before_then_after():
    table = format_table({"pretrained": _figures(0.8), "safe": _figures(0.1), "stable_diffusion": SD})
    assert "| own safe prompt | 0.200 | 0.900 |" in table.splitlines()
    assert "| other safe prompts (baseline) | 0.300 | 0.250 |" in table.splitlines()


def test_hysac_table_puts_traversal_last_and_says_n_a_where_a_figure_cannot_exist():
    lines = format_hysac_table(HYSAC).splitlines()
    assert "| T* top-1 safe share (in V u V*) | 0.100 | 0.300 | 0.700 |" in lines
    assert "| V* top-1 safe share (in T u T*) | 0.150 | 0.350 | 0.750 |" in lines
    assert "| safe V->T R@1 | 0.520 | 0.470 | n/a |" in lines
    assert "| AUROC root distance, texts T vs T* | n/a | 0.970 | n/a |" in lines


def _render(markdown: str) -> list:
    return MarkdownIt("commonmark").enable("table").parse(markdown)


def _inline_after(tokens: list, i: int) -> str:
    return tokens[i + 1].content


def test_report_renders_as_markdown_with_its_headings_tables_and_no_empty_cell():
    tokens = _render(format_report(_results()))
    headings = [_inline_after(tokens, i) for i, t in enumerate(tokens) if t.type == "heading_open"]
    assert headings == ["Demo results", "Safe-CLIP", "Tiny SD pipeline", "HySAC", "Legend"]
    assert sum(t.type == "table_open" for t in tokens) == 3
    cells = [_inline_after(tokens, i) for i, t in enumerate(tokens) if t.type in ("td_open", "th_open")]
    assert cells and all(cell.strip() for cell in cells)
    # every table has exactly its rows: no heading or sentence glued to a table as one more row
    rows, counts = 0, []
    for t in tokens:
        rows += t.type == "tr_open"
        if t.type == "table_close":
            counts, rows = [*counts, rows], 0
    assert counts == [1 + 6 + 2 * 2, 1 + 2, 1 + 8]


def test_legend_explains_every_symbol_and_column_of_the_tables():
    report = format_report(_results())
    legend = report[report.index("## Legend") :]
    tokens = _render(report)
    headers = {_inline_after(tokens, i) for i, t in enumerate(tokens) if t.type == "th_open"} - {"metric", "prompts"}
    symbols = {"T*", "V*", "T,", "V:", "V u V*", "R@1", "(safe GT)", "->", "both-FT", "n/a", "top-1 unsafe share"}
    symbols |= {"top-1 safe share", "AUROC", "accuracy at bounds", "root distance", "<concept>"}
    missing = sorted(s for s in symbols | headers if s not in legend)
    assert not missing, missing
    assert report.rstrip().endswith(LEGEND[1][-1])


@pytest.mark.parametrize("hysac", [True, False])
def test_chart_has_hysac_panel_when_hysac_ran_and_no_legend_covers_a_bar(hysac):
    import matplotlib.pyplot as plt

    results = _results(hysac)
    for figures in (results["pretrained"], results["safe"]):  # tall bars everywhere: no free corner for a legend
        figures.update({key: 0.98 for key in RESULT_KEYS})
    panels = chart_panels(results)
    assert len(panels) == (3 if hysac else 2)
    fig = draw_grouped_bars(panels, ylabel="fraction", ylim=(0, 1.05), rotation=0)
    try:
        renderer = fig.canvas.get_renderer()
        bars = [patch.get_window_extent(renderer) for ax in fig.axes for patch in ax.patches]
        legends = [ax.get_legend().get_window_extent(renderer) for ax in fig.axes]
        assert bars and len(legends) == len(panels)
        assert not [(legend, bar) for legend in legends for bar in bars if legend.overlaps(bar)]
        if hysac:
            heights = [patch.get_height() for patch in fig.axes[2].patches if not math.isnan(patch.get_height())]
            assert HYSAC["text_auroc"] in heights and HYSAC["unsafe_text_top1_safe_share_traversal"] in heights
    finally:
        plt.close(fig)


def test_chart_is_written(tmp_path):
    path = save_plot(_results(), tmp_path / "demo.png")
    with Image.open(path) as image:
        assert image.size[0] > 400 and image.size[1] > 600  # three panels
