import pytest

from train.config import TEXT_TARGETS, TrainConfig, TrainConfigError, load_config, save_config


def test_vit_l_recipe_is_the_paper_recipe():
    cfg = load_config("vit-l-14")
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout) == (16, 1.0, 0.1)
    assert cfg.lora.text_targets == ["k_proj", "v_proj", "out_proj", "fc1", "fc2"] == TEXT_TARGETS
    assert cfg.lora.vision_targets == [*TEXT_TARGETS, "patch_embedding"]
    assert (cfg.optim.lr, cfg.data.batch_size, cfg.optim.epochs, cfg.patience) == (1e-3, 128, 50, 5)
    assert cfg.loss.logit_scale == 100.0
    w = cfg.loss.safe_clip_weights().normalised()
    assert w["nce_image_unsafe"] == pytest.approx(0.5 / 1.75)


def test_overrides_are_typed_and_round_trip(tmp_path):
    cfg = load_config(
        "vit-l-14",
        [
            "optim.lr=3e-4",
            "lora.text_targets=[k_proj]",
            "optim.max_grad_norm=1",
            "loss.weights.cos_text_safe=0.3",
            "cache_references=false",
        ],
    )
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.max_grad_norm, float)
    assert cfg.lora.text_targets == ["k_proj"] and cfg.cache_references is False
    assert cfg.loss.safe_clip_weights().cos_text_safe == 0.3
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg and again.digest() == cfg.digest()
    assert load_config(None).digest() == TrainConfig().digest() != cfg.digest()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lrr=1"], "did you mean 'lr'"),
        (["optim.lr=fast"], "optim.lr must be"),
        (["lora.rank=0"], "lora.rank must be >= 1"),
        (["mixed_precision=fp8"], "mixed_precision must be"),
        (["loss.weights.cos_foo=1"], "unknown term"),
        (["optim.schedule=linear"], "optim.schedule"),
        (["noequals"], "key.sub=value"),
    ],
)
def test_bad_configs_raise_clear_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, overrides)


def test_unknown_recipe_lists_recipes():
    with pytest.raises(FileNotFoundError, match="vit-l-14"):
        load_config("no-such-recipe")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=inf", "optim.lr must be > 0"),  # trained to NaN adapters and exited 0
        ("optim.lr=nan", "optim.lr must be > 0"),  # a ValueError traceback from torch
        ("optim.lr=.nan", "optim.lr must be > 0"),
        ("optim.lr=0", "optim.lr must be > 0"),
        ("optim.betas=[0.9,1.0]", r"optim.betas must be in \[0, 1\)"),
        ("optim.betas=[0.9]", "optim.betas must hold 2 numbers"),
        ("optim.weight_decay=-0.1", "optim.weight_decay must be >= 0"),
        ("optim.max_grad_norm=.inf", "optim.max_grad_norm must be > 0"),
        ("optim.warmup_steps=-1", "optim.warmup_steps must be >= 0"),
        ("lora.alpha=nan", "lora.alpha must be > 0"),
        ("lora.dropout=1", r"lora.dropout must be in \[0, 1\)"),
        ("loss.logit_scale=inf", "loss.logit_scale must be > 0"),
        ("loss.weights.cos_text_safe=.nan", "loss.weights: SafeClipWeights must be finite"),
        ("hysac.curvature=inf", "hysac.curvature must be > 0"),
        ("hysac.alpha_init=nan", "hysac.alpha_init must be > 0"),
        ("hysac.weights.ent_sv=.inf", "hysac.weights: HySACWeights must be finite"),
        ("data.seed=-1", "data.seed must be in"),
        ("data.val_size=0", "data.val_size must be >= 1"),
        ("data.num_workers=-1", "data.num_workers must be >= 0"),
        ("log_every_steps=0", "log_every_steps must be >= 1"),  # a ZeroDivisionError at the first step
        ("save_every_steps=-2", "save_every_steps must be >= 0"),
    ],
)
def test_out_of_range_values_are_refused_up_front_with_the_setting_named(override, message):
    with pytest.raises(TrainConfigError, match=message):
        load_config(None, [override])


def test_a_config_built_in_code_is_checked_by_validate():
    cfg = TrainConfig()
    cfg.optim.lr = float("inf")
    with pytest.raises(TrainConfigError, match=r"optim\.lr must be > 0"):
        cfg.validate()
    cfg.optim.lr, cfg.lora.rank = 1e-3, 2.0  # a float where an integer belongs
    with pytest.raises(TrainConfigError, match=r"lora.rank must be >= 1 \(an integer\), got 2.0"):
        cfg.validate()
