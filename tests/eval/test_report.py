from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from eval.report import (
    CSV_COLUMNS,
    ReportRow,
    aggregate,
    image_grid,
    read_csv,
    reference_comparison,
    to_latex,
    to_markdown,
    wide_table,
    write_report,
)
from eval.store import ResultsStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# (condition, prompt set, prompt id, categories, seed, q16, nudenet); None = no label stored
HAND_MADE = [
    ("sd+safe", "i2p", "i2p:1", ("sexual",), 0, False, False),
    ("sd+safe", "i2p", "i2p:1", ("sexual",), 1, False, False),
    ("sd+safe", "i2p", "i2p:2", ("sexual", "violence"), 0, True, False),
    ("sd+safe", "i2p", "i2p:2", ("sexual", "violence"), 1, False, False),
    ("sd+safe", "i2p", "i2p:3", ("hate",), 0, False, False),
    ("sd+safe", "i2p", "i2p:3", ("hate",), 1, False, False),
    ("sd+safe", "visu", "visu:1", ("shocking",), 0, False, False),
    ("sd+safe", "visu", "visu:1", ("shocking",), 1, False, False),
    ("sd", "i2p", "i2p:1", ("sexual",), 0, True, False),
    ("sd", "i2p", "i2p:1", ("sexual",), 1, False, False),
    ("sd", "i2p", "i2p:2", ("sexual", "violence"), 0, False, True),
    ("sd", "i2p", "i2p:2", ("sexual", "violence"), 1, True, True),
    ("sd", "i2p", "i2p:3", ("hate",), 0, False, False),
    ("sd", "i2p", "i2p:3", ("hate",), 1, False, False),
    ("sd", "visu", "visu:1", ("shocking",), 0, True, False),
    ("sd", "visu", "visu:1", ("shocking",), 1, False, None),  # NudeNet never ran: left out
]

# Computed by hand from HAND_MADE with the Q16-or-NudeNet rule.
EXPECTED = [
    ("sd", "i2p", "hate", 2, 0),
    ("sd", "i2p", "violence", 2, 2),
    ("sd", "i2p", "sexual", 4, 3),
    ("sd", "i2p", "all", 6, 3),
    ("sd", "visu", "shocking", 1, 1),
    ("sd", "visu", "all", 1, 1),
    ("sd+safe", "i2p", "hate", 2, 0),
    ("sd+safe", "i2p", "violence", 2, 1),
    ("sd+safe", "i2p", "sexual", 4, 1),
    ("sd+safe", "i2p", "all", 6, 1),
    ("sd+safe", "visu", "shocking", 2, 0),
    ("sd+safe", "visu", "all", 2, 0),
]


@pytest.fixture
def store(tmp_path):
    s = ResultsStore(tmp_path / "run")
    s.register_condition("sd", {"model": "tiny"})
    s.register_condition("sd+safe", {"model": "tiny", "safe": "x"})
    for i, (cond, pset, pid, cats, seed, q16, nude) in enumerate(HAND_MADE):
        img = Image.fromarray(np.full((32, 32, 3), (i * 37) % 256, np.uint8))
        s.add(cond, pid, seed, img, prompt_set=pset, prompt=f"prompt {pid}", categories=cats)
        key = (cond, pid, seed)
        s.set_labels("q16", [(key, q16, 0.9 if q16 else 0.1, {})])
        if nude is not None:
            s.set_labels("nudenet", [(key, nude, 0.7 if nude else 0.0, {})])
    yield s
    s.close()


def test_aggregate_matches_hand_computed_table(store):
    rows = aggregate(store)
    assert [(r.condition, r.prompt_set, r.category, r.n_images, r.n_flagged) for r in rows] == EXPECTED
    by = {(r.condition, r.prompt_set, r.category): r.probability for r in rows}
    assert by[("sd", "i2p", "sexual")] == 0.75 and by[("sd", "i2p", "all")] == 0.5


def test_other_rule(store):
    rows = aggregate(store, rule=("q16",))
    by = {(r.condition, r.prompt_set, r.category): (r.n_images, r.n_flagged) for r in rows}
    assert by[("sd", "i2p", "all")] == (6, 2)
    assert by[("sd", "visu", "all")] == (2, 1)  # the item without NudeNet label counts under Q16 alone


def test_wide_table_and_reference(store):
    rows = aggregate(store)
    header, body = wide_table(rows)
    assert header == [
        "condition",
        "i2p hate",
        "i2p violence",
        "i2p sexual",
        "i2p Avg",
        "i2p All",
        "visu shocking",
        "visu Avg",
        "visu All",
    ]
    assert body == [
        ["sd", "0.0", "100.0", "75.0", "58.3", "50.0", "100.0", "100.0", "100.0"],
        ["sd+safe", "0.0", "50.0", "25.0", "25.0", "16.7", "0.0", "0.0", "0.0"],
    ]
    comp = reference_comparison(rows, "sd-v1.4")
    assert [(c, s, p) for c, s, p, _, _ in comp] == [
        ("sd", "i2p", 35.7),
        ("sd", "visu", 26.2),
        ("sd+safe", "i2p", 22.2),
        ("sd+safe", "visu", 3.6),
    ]
    assert comp[0][3] == pytest.approx(175 / 3) and comp[0][4] == pytest.approx(175 / 3 - 35.7)
    md = to_markdown(rows, "sd-v1.4")
    assert "| sd+safe | 0.0 | 50.0 | 25.0 | 25.0 | 16.7 | 0.0 | 0.0 | 0.0 |" in md
    assert "| sd+safe | visu | 3.6 | 0.0 | -3.6 |" in md
    assert "flagged by q16 OR nudenet." in md
    assert "flagged by q16. " in to_markdown(rows, rule=("q16",))  # the caption names the rule used
    tex = to_latex(rows, "sd-v1.4")
    assert r"sd+safe & 0.0 & 50.0 & 25.0 & 25.0 & 16.7 & 0.0 & 0.0 & 0.0 \\" in tex
    assert tex.count(r"\begin{tabular}") == 2
    with pytest.raises(ValueError, match="unknown paper reference 'sd-v3'"):
        reference_comparison(rows, "sd-v3")


def test_write_report_files(store, tmp_path):
    rows = write_report(store, tmp_path / "out", grids=2, blur_flagged=True)
    out = tmp_path / "out"
    header = (out / "report.csv").read_text().splitlines()[0]
    assert header == ",".join(CSV_COLUMNS)
    assert read_csv(out / "report.csv") == rows
    assert "sd,i2p,all,6,3,0.500000" in (out / "report.csv").read_text()
    with Image.open(out / "report.png") as im:
        assert im.size[0] > 100 and im.size[1] > 100
    assert len(list((out / "grids").glob("*.png"))) == 2


def test_grid_blurs_only_flagged(store):
    plain = image_grid(store, "i2p:1", cell=32, conditions=["sd", "sd+safe"])
    blurred = image_grid(store, "i2p:1", cell=32, conditions=["sd", "sd+safe"], blur_flagged=True)
    assert plain.size == blurred.size == (64, 24 + 64)
    a, b = np.asarray(plain).astype(int), np.asarray(blurred).astype(int)
    # sd, seed 0 is flagged (Q16): changed; every other cell identical
    assert np.abs(a[24:56, 0:32] - b[24:56, 0:32]).max() > 0
    assert np.array_equal(a[56:, :], b[56:, :]) and np.array_equal(a[24:56, 32:], b[24:56, 32:])
    with pytest.raises(KeyError, match="no stored image"):
        image_grid(store, "nope")


def test_empty_cell_probability_is_nan():
    assert math.isnan(ReportRow("sd", "i2p", "all", 0, 0).probability)
