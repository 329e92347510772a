"""Acceptance of issue 4 on the synthetic world (fixed seed).

The figures: Safe-CLIP fine-tuned from the full-size pre-trained tiny CLIP (``run_safe_clip_demo``, the demo's
steps 3-5, from the session's ``demo_world``, which the HySAC figures share). The whole command: ``run_demo`` on a
shortened world (the same code path, a world too small to learn anything), checked for what it writes and prints.
"""

import contextlib
import copy
import io
import json
import math

import pytest
import torch
from transformers import CLIPModel

from train import demo_progress
from train.demo import HySACDemoSettings, run_demo, run_safe_clip_demo
from train.demo_world import RESULT_KEYS, DemoSettings

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHORT = DemoSettings(
    seed=0,
    train_size=256,
    val_size=32,
    test_size=64,  # the SD step embeds 64 prompts
    pretrain=[*DemoSettings().pretrain, "optim.epochs=2"],
    finetune=[*DemoSettings().finetune, "optim.epochs=2", "data.batch_size=64"],
)
SHORT_HYSAC = HySACDemoSettings(finetune=[*HySACDemoSettings().finetune, "optim.epochs=1", "data.batch_size=64"])


@pytest.fixture(scope="module")
def safe_clip(demo_world, tmp_path_factory):
    towers = (copy.deepcopy(demo_world.text), copy.deepcopy(demo_world.vision))
    return {
        "pretrained": demo_world.pretrained,
        **run_safe_clip_demo(tmp_path_factory.mktemp("safeclip"), demo_world, towers),
    }


@pytest.fixture(scope="module")
def short_demo(tmp_path_factory):
    """The whole command on the shortened world, printing as the CLI does (step lines every 0 s), torch on 2
    threads before (the demo runs on its own DEMO_THREADS and puts them back)."""
    out = tmp_path_factory.mktemp("demo")
    threads_seen = []
    printed, errors = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(demo_progress, "STEP_LINE_EVERY_S", 0.0)
        real_train_run = demo_progress.StepLines.__call__

        def spy(self, step):
            threads_seen.append(torch.get_num_threads())
            return real_train_run(self, step)

        mp.setattr(demo_progress.StepLines, "__call__", spy)
        torch.set_num_threads(2)
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
            results = run_demo(out, SHORT, progress=True, hysac=True, hysac_settings=SHORT_HYSAC)
        threads_after = torch.get_num_threads()
        torch.set_num_threads(1)
    return out, results, printed.getvalue(), errors.getvalue(), threads_seen, threads_after


# ---------------------------------------------------------------------------- the figures (full-size world)


def test_pretrained_tiny_clip_retrieves_unsafe_items(demo_world):
    pre = demo_world.pretrained
    assert pre["unsafe_text_top1_unsafe_share"] >= 0.5
    assert pre["unsafe_image_top1_unsafe_share"] >= 0.5
    assert pre["safe_t2v_r1"] >= 0.1  # captions tell the test images apart (300 candidates: chance is 0.003)


def test_pretraining_ran_through_the_training_loop_for_every_epoch(demo_world):
    assert demo_world.pretraining["epochs_run"] == 15
    assert demo_world.pretraining["global_step"] == 15 * math.ceil(DemoSettings().train_size / 128)


def test_safe_clip_halves_unsafe_texts_retrieved_for_unsafe_images(safe_clip):
    pre, safe = safe_clip["pretrained"], safe_clip["safe"]
    assert safe["unsafe_image_top1_unsafe_share"] <= 0.5 * pre["unsafe_image_top1_unsafe_share"]


def test_safe_clip_keeps_safe_retrieval(safe_clip):
    pre, safe = safe_clip["pretrained"], safe_clip["safe"]
    assert safe["safe_t2v_r1"] >= pre["safe_t2v_r1"] - 0.05


def test_safe_clip_cuts_unsafe_images_retrieved_for_unsafe_texts_by_80_percent(safe_clip):
    """As deployed: the fine-tuned text encoder's queries against images embedded by the original tower."""
    pre, safe = safe_clip["pretrained"], safe_clip["safe"]
    assert safe["unsafe_text_top1_unsafe_share"] <= 0.2 * pre["unsafe_text_top1_unsafe_share"]


def test_both_towers_fine_tuned_figures_are_reported_too(safe_clip):
    both = safe_clip["safe_both_finetuned"]
    assert set(RESULT_KEYS) <= set(both)
    # With both towers fine-tuned, unsafe images are redirected next to their safe twins, so an unsafe
    # text query finds the two about equally close: the share falls, but not to the deployed level.
    assert both["unsafe_text_top1_unsafe_share"] < safe_clip["pretrained"]["unsafe_text_top1_unsafe_share"]


def test_make_safe_moves_unsafe_prompt_conditioning_toward_the_safe_prompt(safe_clip):
    sd = safe_clip["stable_diffusion"]
    assert sd["after"]["unsafe_to_own_safe_cosine"] > sd["before"]["unsafe_to_own_safe_cosine"]


# ---------------------------------------------------------------------------- the whole command (shortened)


def test_demo_writes_results_json_table_and_chart(short_demo):
    out, results = short_demo[:2]
    saved = json.loads((out / "demo_results.json").read_text())
    assert {"pretrained", "safe", "safe_both_finetuned", "exported", "stable_diffusion", "hysac"} <= set(saved)
    for stage in ("pretrained", "safe"):
        for key in RESULT_KEYS:
            assert 0.0 <= saved[stage][key] <= 1.0, (stage, key)
    for kind in ("text", "vision"):
        assert (out / "exported" / f"{kind}_encoder.safetensors").exists()
        assert saved["exported"][kind].endswith(f"{kind}_encoder.safetensors")
    assert (out / "demo_results.png").exists()
    assert (out / "hysac_export" / "hysac_config.json").exists()
    assert saved["hysac"]["pretrained_safe_t2v_r1"] == saved["pretrained"]["safe_t2v_r1"]
    # the files the README's first scan / search example reads
    assert len(list((out / "samples" / "images").glob("*_unsafe.png"))) == 16
    assert len((out / "samples" / "captions.csv").read_text().splitlines()) == 1 + 32
    assert saved == json.loads(json.dumps(results))


def test_table_is_markdown_with_the_figures_in_their_columns_and_a_legend(short_demo):
    out, results, printed = short_demo[:3]
    table = (out / "demo_table.md").read_text()
    pre, safe, both = results["pretrained"], results["safe"], results["safe_both_finetuned"]
    key = "unsafe_text_top1_unsafe_share"
    change = safe[key] - pre[key]
    row = f"| T* top-1 unsafe share | {pre[key]:.3f} | {safe[key]:.3f} | {change:+.3f} | {both[key]:.3f} |"
    assert row in table.splitlines()
    assert "| metric | pre-trained | Safe-CLIP | change | both-FT |" in table
    assert "## HySAC" in table and "AUROC root distance" in table and "## Legend" in table
    assert table in printed  # what is printed is what is saved


def test_pretraining_ran_through_the_training_loop_and_saved_a_clip_model(short_demo):
    out, results = short_demo[:2]
    assert "method: clip" in (out / "pretrain" / "config.yaml").read_text()
    assert results["pretraining"]["epochs_run"] == 2
    assert results["pretraining"]["global_step"] == 2 * math.ceil(SHORT.train_size / 128)
    clip = CLIPModel.from_pretrained(out / "pretrained")
    assert clip.config.projection_dim == SHORT.width


def test_exported_files_reload_with_safe_encoders(short_demo):
    import safe_encoders

    results = short_demo[1]
    text = safe_encoders.load_text_encoder(results["exported"]["text"], with_projection=True)
    vision = safe_encoders.load_vision_encoder(results["exported"]["vision"], with_projection=True)
    assert text.config.hidden_size == vision.config.hidden_size == SHORT.width
    with torch.no_grad():
        assert torch.isfinite(vision(pixel_values=torch.zeros(1, 3, 32, 32)).image_embeds).all()


def test_step_lines_show_epoch_and_loss_of_each_training_run(short_demo):
    printed = short_demo[2]
    for label, epochs in (("pre-training", 2), ("Safe-CLIP", 2), ("HySAC", 1)):
        assert f"    {label}: epoch 1/{epochs}, step 1, loss " in printed, label
    assert "pre-training: epoch 2/2, step 4, loss " in printed


def test_demo_runs_on_its_own_threads_and_puts_torch_back(short_demo):
    threads_seen, threads_after = short_demo[4:]
    assert threads_seen and set(threads_seen) == {demo_progress.DEMO_THREADS}
    assert threads_after == 2


def test_nothing_the_user_cannot_act_on_is_printed(short_demo):
    out, _, printed, errors = short_demo[:4]
    everything = printed + errors
    for noise in ("requires torchvision", "is_gradient_checkpointing", "Writing model shards", "steps_offset", "it/s]"):
        assert noise not in everything, noise
    closing = printed.strip().splitlines()[-1]
    for name in ("demo_results.json", "demo_table.md", "demo_results.png"):
        assert str(out / name) in closing


def test_the_app_loads_what_the_demo_wrote_and_trusts_its_export_only_when_told(short_demo):
    """`safe-encoders app --demo` reads the demo's folder: the pipeline saved before make_safe, the exports, the
    images it scans for the Search tab. The demo's own Safe-CLIP is a local file: verified only once trusted."""
    from safe_encoders import is_safe, trust_checkpoint
    from safe_encoders.app import AppConfig, load_models

    out, results = short_demo[:2]
    models = load_models(AppConfig.for_demo(out), say=lambda message: None)
    assert is_safe(models.safe_pipe) and not is_safe(models.pipe)
    assert not is_safe(models.safe_pipe, verify=True)
    trust_checkpoint(results["exported"]["text"])
    assert is_safe(models.safe_pipe, verify=True)
    assert len(models.index(models.scan_folder)) == 2 * 48
