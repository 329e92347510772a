"""HySAC through the Safe-CLIP trainer: config, loss, learned scalars, exact resume, bounds and export."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from eval.data.synthetic import build_image_processor
from safe_encoders.hysac import HySAC, lorentz
from tests.train.synthetic_builders import encoded_worlds
from train.checkpoints import list_checkpoints
from train.config import load_config
from train.data import stack_encoded
from train.hysac_export import embed_quadruplets, export_hysac, validation_bounds
from train.hysac_losses import HYSAC_TERM_NAMES
from train.loop import run_training
from train.model import HySACTrainModel, SafeClipModel
from train.optim import build_optimizer
from train.tiny_clip import tiny_clip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tokenizer):
    return encoded_worlds(tokenizer, 32, 16)


def config(tmp_path, name, *extra):
    return load_config(
        None,
        [
            f"output_dir={tmp_path / name}",
            "method=hysac",
            "data.batch_size=8",
            "optim.epochs=2",
            "progress=false",
            "tensorboard=false",
            "lora.rank=4",
            "lora.alpha=4",
            "optim.lr=1e-2",
            "save_every_steps=1",
            "keep_checkpoints=20",
            *extra,
        ],
    )


def make_model(tokenizer, cfg):
    torch.manual_seed(0)
    text, vision = tiny_clip(tokenizer, 32, width=32, layers=1, projection_dim=32)
    return HySACTrainModel(
        text,
        vision,
        cfg.lora,
        cfg.hysac,
        base_model="tiny",
        tokenizer=tokenizer,
        image_processor=build_image_processor(32),
    )


def test_config_selects_hysac_and_checks_its_settings(tmp_path):
    cfg = config(tmp_path, "c", "hysac.weights.ent_vu=0.5", "hysac.curvature=2.0")
    assert cfg.method == "hysac" and cfg.hysac.hysac_weights().ent_vu == 0.5 and cfg.hysac.curvature == 2.0
    assert load_config(None).method == "safe-clip"
    with pytest.raises(ValueError, match="unknown term"):
        config(tmp_path, "c", "hysac.weights.nope=1")
    with pytest.raises(ValueError, match="method"):
        load_config(None, ["method=meru"])
    with pytest.raises(ValueError, match="curvature"):
        config(tmp_path, "c", "hysac.curvature=50")


def test_method_and_model_must_match(tokenizer, data, tmp_path):
    cfg = config(tmp_path, "m")
    torch.manual_seed(0)
    text, vision = tiny_clip(tokenizer, 32, width=32, layers=1, projection_dim=32)
    with pytest.raises(TypeError, match="HySACTrainModel"):
        run_training(cfg, SafeClipModel(text, vision, cfg.lora), *data, stack_encoded)


def test_hysac_run_trains_scalars_resumes_exactly_and_exports(tokenizer, data, tmp_path):
    train_set, val_set = data
    # 32 items / batch 8: 4 steps per epoch, 8 in all; the curvature may not leave its range. The logit scale
    # starts above its lower clamp (1/0.07, its default start) so that it can move either way.
    cfg_full = config(tmp_path, "full", "hysac.curvature_range=[0.5,2.0]", "hysac.logit_scale=20.0")
    full_model = make_model(tokenizer, cfg_full)
    start = {n: p.detach().clone() for n, p in full_model.named_parameters() if p.requires_grad}
    full = run_training(cfg_full, full_model, train_set, val_set, stack_encoded)
    assert full.global_step == 8 and full.epochs_run == 2
    final = load_file(str(list_checkpoints(cfg_full.output_dir)[-1] / "adapters.safetensors"))
    for name in ("hysac.log_curvature", "hysac.log_text_alpha", "hysac.log_image_alpha", "hysac.logit_scale"):
        assert name in final and not torch.equal(final[name], start[name]), name
    assert 0.5 - 1e-6 <= full_model.hysac.curvature.item() <= 2.0 + 1e-6
    records = [json.loads(ln) for ln in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert all(name in records[0] for name in HYSAC_TERM_NAMES)
    assert "val_t2v_r1" in records[-1] and not list((tmp_path / "full").glob("references-*"))

    class Crash(RuntimeError):
        pass

    def crash(step):
        if step == 6:
            raise Crash

    cfg = config(tmp_path, "crash", "hysac.curvature_range=[0.5,2.0]", "hysac.logit_scale=20.0")
    with pytest.raises(Crash):
        run_training(cfg, make_model(tokenizer, cfg), train_set, val_set, stack_encoded, on_step=crash)
    shutil.rmtree(list_checkpoints(cfg.output_dir)[-1])  # resume mid-epoch, from step 5
    resumed_model = make_model(tokenizer, cfg)
    with torch.no_grad():
        for p in resumed_model.parameters():
            if p.requires_grad:
                p.add_(0.5)
    assert run_training(cfg, resumed_model, train_set, val_set, stack_encoded).global_step == 8
    again = load_file(str(list_checkpoints(cfg.output_dir)[-1] / "adapters.safetensors"))
    assert final.keys() == again.keys()
    for key in final:
        assert torch.equal(final[key], again[key]), key

    # bounds from the validation set, then the export reloads with the same geometry
    bounds = validation_bounds(full_model, val_set, stack_encoded)
    assert set(bounds.stats) == {"S", "V", "U", "G"} and bounds.stats["S"]["count"] == 16
    emb = embed_quadruplets(full_model, val_set, stack_encoded)
    folder = export_hysac(full_model, tmp_path / "export", bounds=bounds, config=cfg_full)
    saved = json.loads((folder / "hysac_config.json").read_text())
    assert saved["metadata"]["method"] == "hysac" and saved["metadata"]["config_digest"] == cfg_full.digest()
    loaded = HySAC.from_pretrained(folder).eval()
    assert loaded.bounds.threshold("text") == pytest.approx(bounds.threshold("text"))
    torch.testing.assert_close(loaded.curvature, full_model.hysac.curvature.detach())
    batch = stack_encoded([val_set[i] for i in range(4)])
    with torch.no_grad():
        points = loaded.encode_text(batch["safe_input_ids"], batch["safe_attention_mask"])
    torch.testing.assert_close(points, emb["text_safe"][:4], rtol=1e-4, atol=1e-5)
    d = lorentz.root_distance(points, loaded.curvature)
    assert torch.isfinite(d).all()


def test_recipe_is_the_released_one_and_builds_adamw_without_decay_on_the_scalars(tokenizer):
    cfg = load_config("hysac-vit-l-14")
    o = cfg.optim
    assert (o.optimizer, o.lr, tuple(o.betas), o.weight_decay) == ("adamw", 1e-4, (0.9, 0.98), 0.2)
    assert (cfg.data.batch_size, cfg.patience, cfg.seed) == (32, 5, 42)
    assert set(cfg.hysac.hysac_weights().__dict__.values()) == {1.0}
    model = make_model(tokenizer, config(Path("unused"), "r"))
    optimizer = build_optimizer(o, model)
    assert isinstance(optimizer, torch.optim.AdamW)
    decay, no_decay = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in no_decay["params"]} == {
        "hysac.log_curvature",
        "hysac.log_text_alpha",
        "hysac.log_image_alpha",
        "hysac.logit_scale",
    }
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.2 and decay["betas"] == (0.9, 0.98)
    assert all("lora_" in names[id(p)] for p in decay["params"]) and len(decay["params"]) > 0


def test_clamps_hold_after_every_optimizer_step_of_the_loop(tokenizer, data, tmp_path):
    """Scalars started on their bounds and a step of 0.5 (Adam at lr 0.5) would push them out: after every
    step of the loop they are inside, and some of them sit on a bound (the clamp acted)."""
    cfg = config(
        tmp_path, "clamp", "optim.lr=0.5", "optim.epochs=1", "hysac.alpha_init=1.0", "hysac.curvature_range=[0.5,2.0]"
    )
    model = make_model(tokenizer, cfg)
    bounds = model.hysac.parameter_bounds()
    on_a_bound = set()

    def check(step):
        for name, (low, high) in bounds.items():
            value = getattr(model.hysac, name).item()
            assert low - 1e-6 <= value <= high + 1e-6, (step, name, value)
            if value in (low, high) or abs(value - low) < 1e-6 or abs(value - high) < 1e-6:
                on_a_bound.add(name)

    run_training(cfg, model, *data, stack_encoded, on_step=check)
    assert on_a_bound  # without the clamp at least one of them would have left its range
