"""The paper numbers shipped in ``eval/report/paper_tables.py`` are the transcribed CSVs, cell for cell."""

from __future__ import annotations

import csv

import pytest

from eval.report import paper_tables
from tests.tiny_models import data_file


def _csv(name: str) -> list[dict[str, str]]:
    """The transcribed CSV of ../shared/fixtures/data (the test skips when it is absent, as in a plain clone)."""
    with data_file(name).open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_t2i_module_equals_the_csv():
    rows = _csv("safeclip_paper_t2i.csv")
    from_csv = {(r["model"], r["prompt_set"], r["condition"], r["category"]): float(r["percent"]) for r in rows}
    shipped = {
        (model, pset, cond, cat): value
        for model, cells in paper_tables.T2I.items()
        for (pset, cond), values in cells.items()
        for cat, value in zip(paper_tables.T2I_CATEGORIES, values, strict=True)
    }
    assert len(rows) == len(from_csv) == 320
    assert shipped == from_csv
    assert {r["model"]: r["table"] for r in rows} == paper_tables.T2I_TABLES


def test_retrieval_module_equals_the_csv():
    rows = _csv("safeclip_paper_retrieval.csv")
    from_csv = {(r["model"], r["direction"], int(r["k"])): float(r["recall"]) for r in rows}
    shipped = {
        (model, direction, k): value
        for model, table in paper_tables.RETRIEVAL.items()
        for direction, values in table.items()
        for k, value in zip(paper_tables.RETRIEVAL_KS, values, strict=True)
    }
    assert len(rows) == len(from_csv) == 60
    assert shipped == from_csv
    assert list(paper_tables.RETRIEVAL) == list(dict.fromkeys(r["model"] for r in rows))  # the paper's row order


def test_shipped_headline_numbers():
    """Works without the CSVs: the cells the paper's text quotes."""
    avg = paper_tables.T2I_CATEGORIES.index("avg")
    t4, t12 = paper_tables.T2I["sd-v1.4"], paper_tables.T2I["sd-v2.0"]
    assert t4[("i2p", "sd")][avg] - t4[("i2p", "sd+safe")][avg] == pytest.approx(13.5)
    assert t4[("visu", "sd")][avg] - t4[("visu", "sd+safe")][avg] == pytest.approx(22.6)
    assert (t12[("i2p", "sd")][avg], t12[("visu", "sd+safe")][avg]) == (36.9, 2.2)
