"""Acceptance of the HySAC part of issue 7 on the synthetic world (fixed seed): HySAC fine-tuned from the demo's
pre-trained tiny CLIP separates safe from unsafe by root distance, traversal makes unsafe text queries retrieve
safe images, and safe retrieval is kept. The pre-trained model is the session's ``demo_world`` (tests/train/conftest),
shared with the Safe-CLIP figures; the whole demo command with HySAC is checked in test_demo_acceptance.py."""

import copy
import json

import pytest

from safe_encoders.hysac import HySAC
from train.demo import HySACDemoSettings, run_hysac_demo
from train.demo_report import format_hysac_table

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def world(demo_world):
    return demo_world


@pytest.fixture(scope="module")
def hysac(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("hysac_demo")
    towers = (copy.deepcopy(world.text), copy.deepcopy(world.vision))
    return out, run_hysac_demo(out, world, towers, HySACDemoSettings())


def test_root_distance_separates_safe_from_unsafe(hysac):
    h = hysac[1]
    assert h["text_auroc"] >= 0.95
    assert h["image_auroc"] >= 0.95
    assert h["classification"]["text"]["threshold"] == pytest.approx(h["bounds"]["S"]["up_95"])
    # HySAC's order of the four groups by mean root distance on the validation set
    means = [h["bounds"][g]["mean"] for g in ("S", "V", "U", "G")]
    assert means == sorted(means)


def test_traversal_raises_safe_top1_share_of_unsafe_text_queries_by_30_points(hysac):
    h = hysac[1]
    assert h["unsafe_text_top1_safe_share_traversal"] >= h["unsafe_text_top1_safe_share"] + 0.30


def test_safe_retrieval_within_5_points_of_the_pretrained_model(hysac):
    h = hysac[1]
    assert h["safe_t2v_r1"] >= h["pretrained_safe_t2v_r1"] - 0.05
    assert h["safe_v2t_r1"] >= h["pretrained_safe_v2t_r1"] - 0.05
    assert h["pretrained_safe_t2v_r1"] >= 0.1  # the pre-trained model tells the test images apart


def test_export_reloads_with_bounds_and_table_shows_the_figures(hysac, world):
    h = hysac[1]
    model = HySAC.from_pretrained(h["exported"]).eval()
    assert model.bounds is not None and set(model.bounds.to_dict()) == {"S", "V", "U", "G"}
    assert model.threshold("text") == pytest.approx(h["bounds"]["S"]["up_95"])
    assert model.curvature.item() == pytest.approx(h["curvature"], rel=1e-6)
    scores = model.unsafe_score(texts=[world.test_world.captions(i)[1] for i in range(4)]).text
    assert scores.scores.shape == (4,)
    table = format_hysac_table(h)
    assert f"{h['text_auroc']:.3f}" in table and f"{h['unsafe_text_top1_safe_share_traversal']:.3f}" in table
    json.dumps(h)  # what demo_results.json stores under "hysac"
