import pytest

from train.config import TEXT_TARGETS, TrainConfig, load_config, save_config


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
