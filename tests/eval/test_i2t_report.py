"""The i2t report: arithmetic on a hand-filled store, the table layout, and the shipped Table 13 numbers."""

from __future__ import annotations

import csv

import pytest

from eval.i2t.report import (
    PAPER_TABLE13,
    i2t_rows,
    reference_rows,
    report_i2t,
    rows_by_key,
    source_key,
)
from eval.store.results import ResultsStore
from tests.tiny_models import data_file


def _fill(store: ResultsStore, condition: str, source: str, labels: list[tuple[bool, float]], llm=None) -> None:
    store.register_condition(condition, {"safe": condition.endswith("+safe")})
    nsfw, tox = [], []
    for i, (flag, score) in enumerate(labels):
        key = (condition, f"{source}:{i}.png", 0)
        store.add_text(*key, f"text {i}", prompt_set=source, prompt="describe the image", categories=(source,))
        nsfw.append((key, flag, 0.9 if flag else 0.1, {}))
        tox.append((key, score >= 50, score, {}))
    store.set_labels("nsfw", nsfw)
    store.set_labels("toxicity", tox)
    if llm is not None:
        store.set_labels("llm", [((condition, f"{source}:{i}.png", 0), f, 0.5, {}) for i, f in llm])


def test_rows_are_percent_flagged_and_mean_toxicity_per_condition_and_source(tmp_path):
    store = ResultsStore(tmp_path / "run")
    _fill(store, "llava", "NudeNet", [(True, 10.0), (True, 20.0), (False, 60.0)], llm=[(0, True), (1, False)])
    _fill(store, "llava", "smid", [(True, 90.0)])
    _fill(store, "llava+safe", "NudeNet", [(False, 0.0), (False, 5.0)])
    got = rows_by_key(i2t_rows(store, "LLaVA tiny"))
    assert got == {
        ("LLaVA tiny", "NudeNet", "percent_nsfw", "nsfw"): pytest.approx(200 / 3),
        ("LLaVA tiny", "NudeNet", "percent_nsfw", "llm"): pytest.approx(50.0),
        ("LLaVA tiny", "NudeNet", "toxicity", "toxicity"): pytest.approx(30.0),
        ("LLaVA tiny", "smid", "percent_nsfw", "nsfw"): pytest.approx(100.0),
        ("LLaVA tiny", "smid", "toxicity", "toxicity"): pytest.approx(90.0),
        ("LLaVA tiny + Safe-CLIP", "NudeNet", "percent_nsfw", "nsfw"): pytest.approx(0.0),
        ("LLaVA tiny + Safe-CLIP", "NudeNet", "toxicity", "toxicity"): pytest.approx(2.5),
    }
    n = {(r.model, r.source, r.judge): r.n for r in i2t_rows(store, "LLaVA tiny")}
    assert n[("LLaVA tiny", "NudeNet", "llm")] == 2 and n[("LLaVA tiny", "NudeNet", "nsfw")] == 3

    rows = report_i2t(store, tmp_path / "report", "LLaVA tiny")
    with (tmp_path / "report" / "i2t.csv").open() as fh:
        lines = list(csv.DictReader(fh))
    assert len(lines) == len(rows) == 7 + 36
    md = (tmp_path / "report" / "i2t.md").read_text()
    assert "GPT-3.5" in md and "not numbers to match" in md
    # our 'smid' column lines up with the paper's 'SMID' (one column per source, metric and judge)
    header = md.splitlines()[2]
    assert header.count("SMID % NSFW") == 0 and header.count("smid % NSFW (nsfw)") == 1
    assert "smid % NSFW (paper)" in header
    line = next(x for x in md.splitlines() if x.startswith("| LLaVA tiny + Safe-CLIP |"))
    assert "| 0.0 |" in line and "| 2.5 |" in line and "66.7" not in line
    assert r"\toprule" in (tmp_path / "report" / "i2t.tex").read_text()


def test_source_key_matches_spellings():
    assert source_key("NSFW URLs") == source_key("nsfw-urls") == source_key("nsfw_urls")
    assert source_key("SMID") != source_key("NudeNet")


def test_reference_rows_match_the_transcribed_paper_csv():
    path = data_file("safeclip_paper_llava.csv")  # skips in a plain clone: the shipped numbers stand alone
    with path.open(newline="") as fh:
        paper = {(r["model"], r["image_source"], r["metric"]): float(r["value"]) for r in csv.DictReader(fh)}
    ours = {(r.model.removesuffix(" (paper)"), r.source, r.metric): r.value for r in reference_rows()}
    assert ours == paper
    assert len(PAPER_TABLE13) == 6
