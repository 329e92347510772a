"""Acceptance of the HySAC part of issue 7 on the synthetic world (fixed seed): HySAC fine-tuned from the demo's
pre-trained tiny CLIP separates safe from unsafe by root distance, traversal makes unsafe text queries retrieve
safe images, and safe retrieval is kept. The pre-trained model is built once for the module."""

import copy
import json

import pytest

from safe_encoders.hysac import HySAC
from train.demo import DemoSettings, HySACDemoSettings, run_demo, run_hysac_demo
from train.demo_report import format_hysac_table
from train.demo_world import prepare_world


@pytest.fixture(scope="module")
def world(one_torch_thread, tmp_path_factory):
    # the demo's steps 1-2: data and the pre-trained tiny CLIP
    return prepare_world(DemoSettings(seed=0), tmp_path_factory.mktemp("world"))


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


def test_run_demo_writes_the_hysac_key_and_keeps_the_safe_clip_keys(tmp_path, one_torch_thread):
    """Structure only, on a world too small to learn anything: the figures are asserted above."""
    tiny = DemoSettings(
        seed=0,
        train_size=128,
        val_size=32,
        test_size=64,  # the SD step embeds 64 prompts
        pretrain=[*DemoSettings().pretrain, "optim.epochs=1"],
        finetune=["optim.epochs=1", "data.batch_size=64"],
    )
    results = run_demo(
        tmp_path,
        tiny,
        progress=False,
        hysac=True,
        hysac_settings=HySACDemoSettings(finetune=["optim.epochs=1", "data.batch_size=64"]),
    )
    saved = json.loads((tmp_path / "demo_results.json").read_text())
    assert {"pretrained", "safe", "safe_both_finetuned", "exported", "stable_diffusion", "hysac"} <= set(saved)
    for key in (
        "text_auroc",
        "image_auroc",
        "unsafe_text_top1_safe_share",
        "unsafe_text_top1_safe_share_traversal",
        "safe_t2v_r1",
        "pretrained_safe_t2v_r1",
        "bounds",
        "exported",
    ):
        assert key in saved["hysac"], key
    assert saved["hysac"]["pretrained_safe_t2v_r1"] == saved["pretrained"]["safe_t2v_r1"]
    assert "AUROC root distance" in (tmp_path / "demo_table.md").read_text()
    assert (tmp_path / "hysac_export" / "hysac_config.json").exists() and results["hysac"]["exported"]
    # what `safe-encoders app --demo` reads: it loads, the swap verifies, the demo's images are scanned
    from safe_encoders import is_safe
    from safe_encoders.app import AppConfig, load_models

    models = load_models(AppConfig.for_demo(tmp_path), say=lambda message: None)
    assert is_safe(models.safe_pipe, verify=True) and not is_safe(models.pipe)
    assert len(models.index(models.scan_folder)) == 2 * 48
