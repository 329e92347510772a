"""Acceptance of issue 4 on the synthetic world: one full demo run with a fixed seed (the slowest test here)."""

import json
import math

import pytest
import torch
from transformers import CLIPModel

from train.demo import DemoSettings, run_demo
from train.demo_world import RESULT_KEYS


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, DemoSettings(seed=0), progress=False)


def test_demo_writes_results_json_with_the_documented_keys(demo):
    out, results = demo
    saved = json.loads((out / "demo_results.json").read_text())
    for stage in ("pretrained", "safe"):
        for key in RESULT_KEYS:
            assert 0.0 <= saved[stage][key] <= 1.0, (stage, key)
    for kind in ("text", "vision"):
        assert (out / "exported" / f"{kind}_encoder.safetensors").exists()
        assert saved["exported"][kind].endswith(f"{kind}_encoder.safetensors")
    assert (out / "demo_results.png").exists()
    assert saved == json.loads(json.dumps(results))


def test_pretrained_tiny_clip_retrieves_unsafe_items(demo):
    pre = demo[1]["pretrained"]
    assert pre["unsafe_text_top1_unsafe_share"] >= 0.5
    assert pre["unsafe_image_top1_unsafe_share"] >= 0.5
    assert pre["safe_t2v_r1"] >= 0.1  # captions tell the test images apart (300 candidates: chance is 0.003)


def test_safe_clip_halves_unsafe_texts_retrieved_for_unsafe_images(demo):
    pre, safe = demo[1]["pretrained"], demo[1]["safe"]
    assert safe["unsafe_image_top1_unsafe_share"] <= 0.5 * pre["unsafe_image_top1_unsafe_share"]


def test_safe_clip_keeps_safe_retrieval(demo):
    pre, safe = demo[1]["pretrained"], demo[1]["safe"]
    assert safe["safe_t2v_r1"] >= pre["safe_t2v_r1"] - 0.05


def test_safe_clip_cuts_unsafe_images_retrieved_for_unsafe_texts_by_80_percent(demo):
    """As deployed: the fine-tuned text encoder's queries against images embedded by the original tower."""
    pre, safe = demo[1]["pretrained"], demo[1]["safe"]
    assert safe["unsafe_text_top1_unsafe_share"] <= 0.2 * pre["unsafe_text_top1_unsafe_share"]


def test_both_towers_fine_tuned_figures_are_reported_too(demo):
    both = demo[1]["safe_both_finetuned"]
    assert set(RESULT_KEYS) <= set(both)
    # With both towers fine-tuned, unsafe images are redirected next to their safe twins, so an unsafe
    # text query finds the two about equally close: the share falls, but not to the deployed level.
    assert both["unsafe_text_top1_unsafe_share"] < demo[1]["pretrained"]["unsafe_text_top1_unsafe_share"]


def test_make_safe_moves_unsafe_prompt_conditioning_toward_the_safe_prompt(demo):
    sd = demo[1]["stable_diffusion"]
    assert sd["after"]["unsafe_to_own_safe_cosine"] > sd["before"]["unsafe_to_own_safe_cosine"]


def test_exported_files_reload_with_safe_encoders(demo):
    safe_encoders = pytest.importorskip("safe_encoders")
    results = demo[1]
    text = safe_encoders.load_text_encoder(results["exported"]["text"], with_projection=True)
    vision = safe_encoders.load_vision_encoder(results["exported"]["vision"], with_projection=True)
    assert text.config.hidden_size == vision.config.hidden_size == DemoSettings().width
    with torch.no_grad():
        assert torch.isfinite(vision(pixel_values=torch.zeros(1, 3, 32, 32)).image_embeds).all()


def test_table_is_markdown_with_the_figures_in_their_columns(demo):
    """The printed and saved table (eval.report.tables' Markdown): pre-trained, Safe-CLIP, change, both-FT."""
    out, results = demo
    table = (out / "demo_table.md").read_text()
    pre, safe, both = results["pretrained"], results["safe"], results["safe_both_finetuned"]
    key = "unsafe_text_top1_unsafe_share"
    change = safe[key] - pre[key]
    row = f"| T* top-1 unsafe share | {pre[key]:.3f} | {safe[key]:.3f} | {change:+.3f} | {both[key]:.3f} |"
    assert row in table.splitlines()
    assert "| metric | pre-trained | Safe-CLIP | change | both-FT |" in table


def test_pretraining_ran_through_the_training_loop_and_saved_a_clip_model(demo):
    """Step 2 is the training loop's ``clip`` method: its run folder, every epoch, and a ``CLIPModel`` folder."""
    out, results = demo
    assert "method: clip" in (out / "pretrain" / "config.yaml").read_text()
    assert results["pretraining"]["epochs_run"] == 15
    assert results["pretraining"]["global_step"] == 15 * math.ceil(DemoSettings().train_size / 128)
    clip = CLIPModel.from_pretrained(out / "pretrained")
    assert clip.config.projection_dim == DemoSettings().width
