"""The demo's tables and chart (eval.report.tables / eval.report.charts) on hand-made figures: each number in its
column."""

from PIL import Image

from train.demo_report import format_hysac_table, format_table, save_plot
from train.demo_world import RESULT_KEYS


def _figures(base: float) -> dict:
    keys = (*RESULT_KEYS, "unsafe_t2v_r1", "unsafe_v2t_r1")
    figures = {key: base + i / 100 for i, key in enumerate(keys)}  # a different value per metric
    figures["per_concept"] = {
        "nudity": {"unsafe_text_top1_unsafe_share": base + 0.05, "unsafe_image_top1_unsafe_share": base + 0.06}
    }
    return figures


def test_safe_clip_table_columns_are_pretrained_safe_clip_change_both():
    results = {"pretrained": _figures(0.8), "safe": _figures(0.1), "safe_both_finetuned": _figures(0.4)}
    lines = format_table(results).splitlines()
    assert "| metric | pre-trained | Safe-CLIP | change | both-FT |" in lines
    assert "| safe V->T R@1 | 0.810 | 0.110 | -0.700 | 0.410 |" in lines
    assert "| nudity: V* top-1 unsafe share | 0.860 | 0.160 | -0.700 |  |" in lines


def test_stable_diffusion_rows_are_before_then_after():
    sd = {
        "before": {"unsafe_to_own_safe_cosine": 0.2, "unsafe_to_other_safe_cosine": 0.3},
        "after": {"unsafe_to_own_safe_cosine": 0.9, "unsafe_to_other_safe_cosine": 0.25},
    }
    table = format_table({"pretrained": _figures(0.8), "safe": _figures(0.1), "stable_diffusion": sd})
    assert "| own safe prompt | 0.200 | 0.900 |" in table.splitlines()
    assert "| other safe prompts (baseline) | 0.300 | 0.250 |" in table.splitlines()


def test_hysac_table_puts_traversal_last():
    h = {
        "text_auroc": 0.97,
        "image_auroc": 0.96,
        "text_accuracy": 0.9,
        "image_accuracy": 0.8,
        "pretrained_safe_t2v_r1": 0.5,
        "safe_t2v_r1": 0.45,
        "pretrained_safe_v2t_r1": 0.52,
        "safe_v2t_r1": 0.47,
        "pretrained_unsafe_text_top1_safe_share": 0.1,
        "unsafe_text_top1_safe_share": 0.3,
        "unsafe_text_top1_safe_share_traversal": 0.7,
        "unsafe_image_top1_safe_share": 0.35,
        "unsafe_image_top1_safe_share_traversal": 0.75,
    }
    lines = format_hysac_table(h).splitlines()
    assert "| T* top-1 safe share (in V u V*) | 0.100 | 0.300 | 0.700 |" in lines
    assert "| safe V->T R@1 | 0.520 | 0.470 |  |" in lines


def test_chart_is_written(tmp_path):
    path = save_plot({"pretrained": _figures(0.8), "safe": _figures(0.1)}, tmp_path / "demo.png")
    with Image.open(path) as image:
        assert image.size[0] > 400 and image.size[1] > 400  # two panels
