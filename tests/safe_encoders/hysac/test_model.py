import json
import logging
import math
import pickle

import pytest
import torch

from safe_encoders import (
    ArchitectureMismatchError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    UnsafeFormatError,
    load_text_encoder,
)
from safe_encoders.format import read_encoder_header
from safe_encoders.hysac import HySAC, HySACBounds, lorentz
from tests.safe_encoders.hysac.tiny_hysac import (
    RELEASE_SCALARS,
    expected_points,
    peft_towers,
    release_state,
    sample_inputs,
    tiny_base_folder,
    tiny_hysac,
)
from tests.tiny_models import tiny_clip_model, write_hub_cache

BOUNDS = {"S": {"up_95": 0.5, "mean": 0.3}, "V": {"up_95": 0.7}, "U": {"up_95": 1.1}, "G": {"up_95": 1.4}}


# ------------------------------------------------------------------------- the model


def test_encoders_lift_scaled_clip_features_onto_the_hyperboloid():
    clip = tiny_clip_model(0)
    model = HySAC.from_clip_model(clip)
    input_ids, pixel_values = sample_inputs()
    with torch.no_grad():
        text_features = clip.get_text_features(input_ids=input_ids).pooler_output
        image_features = clip.get_image_features(pixel_values=pixel_values).pooler_output
        text, image = model.encode_text(input_ids), model.encode_image(pixel_values)
    alpha = 1 / math.sqrt(16)
    assert text.shape == (3, 16) and image.shape == (3, 16)
    assert torch.allclose(text, lorentz.expmap0(alpha * text_features, 1.0), atol=1e-6)
    assert torch.allclose(image, lorentz.expmap0(alpha * image_features, 1.0), atol=1e-6)
    assert torch.allclose(model.root_distance(text), alpha * text_features.norm(dim=-1), atol=1e-5)
    assert torch.allclose(model.encode_text(input_ids, project=False), text_features, atol=1e-6)


def test_parameters_are_learned_in_log_space_and_clamped():
    model = tiny_hysac()
    assert model.curvature.item() == pytest.approx(1.0)
    assert model.text_alpha.item() == pytest.approx(1 / math.sqrt(16))
    assert model.image_alpha.item() == pytest.approx(1 / math.sqrt(16))
    assert model.logit_scale.exp().item() == pytest.approx(1 / 0.07, rel=1e-5)
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    assert {"log_curvature", "log_text_alpha", "log_image_alpha", "logit_scale"} <= names
    with torch.no_grad():
        model.log_curvature.fill_(5.0)
        model.logit_scale.fill_(9.0)
    assert model.curvature.item() == pytest.approx(10.0)
    model.clamp_parameters_()
    assert model.log_curvature.item() == pytest.approx(math.log(10.0))
    assert model.logit_scale.item() == pytest.approx(math.log(100.0))
    with pytest.raises(ValueError, match="outside curvature_range"):
        tiny_hysac(curvature=20.0)


LOG_C, LOGIT = (math.log(0.1), math.log(10.0)), (math.log(1 / 0.07), math.log(100.0))  # 7b: +-2.3026; 2.6593, 4.6052


@pytest.mark.parametrize("push", [1.0, -1.0], ids=["up", "down"])
def test_clamps_hold_after_a_step_that_would_push_them_out(push):
    model = tiny_hysac()
    scalars = [model.log_curvature, model.log_text_alpha, model.log_image_alpha, model.logit_scale]
    optimizer = torch.optim.SGD(scalars, lr=6.0)
    # one step of 6 in direction `push` on every scalar: alphas from -1.39 to +4.6 / -7.4, log c to +-6,
    # logit scale to 8.7 / -3.3
    (-push * sum(scalars)).backward()
    optimizer.step()
    before = {name: getattr(model, name).item() for name in ("log_curvature", "log_text_alpha", "logit_scale")}
    assert (before["log_curvature"] > LOG_C[1]) if push > 0 else (before["log_curvature"] < LOG_C[0])
    assert (before["logit_scale"] > LOGIT[1]) if push > 0 else (before["logit_scale"] < LOGIT[0])
    moved = model.clamp_parameters_()
    expected_c, expected_logit = (LOG_C[1], LOGIT[1]) if push > 0 else (LOG_C[0], LOGIT[0])
    assert model.log_curvature.item() == pytest.approx(expected_c, abs=1e-6)
    assert model.logit_scale.item() == pytest.approx(expected_logit, abs=1e-6)
    if push > 0:  # alpha <= 1: the feature scales never enlarge the features
        assert model.log_text_alpha.item() == model.log_image_alpha.item() == 0.0
        assert set(moved) == {"log_curvature", "log_text_alpha", "log_image_alpha", "logit_scale"}
    else:  # no lower clamp on the alphas
        assert model.log_text_alpha.item() == pytest.approx(math.log(0.25) - 6.0, abs=1e-5)
        assert set(moved) == {"log_curvature", "logit_scale"}
    assert moved["logit_scale"] == pytest.approx((before["logit_scale"], expected_logit), abs=1e-6)
    assert model.clamp_parameters_() == {}  # idempotent


def test_initial_values_as_released_and_bad_ones_refused():
    model = tiny_hysac()  # embed_dim 16 here; 768 for ViT-L: log alpha = ln(768^-1/2) = -3.323
    assert model.log_text_alpha.item() == pytest.approx(-0.5 * math.log(16))
    assert model.logit_scale.item() == pytest.approx(LOGIT[0]) and model.log_curvature.item() == 0.0
    assert model.parameter_bounds()["logit_scale"] == pytest.approx(LOGIT)
    with pytest.raises(ValueError, match="logit_scale_init 5"):
        tiny_hysac(logit_scale_init=5.0)
    with pytest.raises(ValueError, match="alpha_init 2"):
        tiny_hysac(alpha_init=2.0)
    with torch.no_grad():
        model.logit_scale.fill_(float("nan"))
        model.log_curvature.fill_(9.0)
    with pytest.raises(ValueError, match="non-finite"):
        model.clamp_parameters_()
    assert model.log_curvature.item() == 9.0  # validated before anything was changed


def test_loading_checks_the_clamps(tmp_path, caplog):
    text, vision = peft_towers()
    out_of_range = {**RELEASE_SCALARS, "textual_alpha": 2.0, "logit_scale": 150.0}
    release = _write_release(tmp_path / "release", release_state(text, vision, scalars=out_of_range))
    base = tiny_base_folder(tmp_path / "base")
    with caplog.at_level(logging.WARNING, logger="safe_encoders"):
        model = HySAC.from_pretrained(release, base_model=str(base), lora_alpha=2.0, load_processors=False)
    assert "outside the training clamps" in caplog.text and "log_text_alpha" in caplog.text
    assert model.log_text_alpha.item() == 0.0 and model.logit_scale.item() == pytest.approx(LOGIT[1])
    assert model.log_image_alpha.item() == pytest.approx(math.log(0.25))  # in range: untouched
    bad = release_state(text, vision, scalars={**RELEASE_SCALARS, "curv": float("nan")})
    with pytest.raises(CorruptCheckpointError, match=r"curv is nan|non-finite"):
        HySAC.from_pretrained(_write_release(tmp_path / "nan", bad), base_model=str(base), load_processors=False)


def test_similarity_and_logits_are_scaled_negative_distances():
    model = tiny_hysac()
    input_ids, pixel_values = sample_inputs()
    with torch.no_grad():
        out = model(input_ids=input_ids, pixel_values=pixel_values)
        distances = lorentz.pairwise_distance(out["text_embeds"], out["image_embeds"], 1.0)
        assert torch.allclose(model.similarity(out["text_embeds"], out["image_embeds"]), -distances)
        assert torch.allclose(out["logits_per_text"], -distances / 0.07, rtol=1e-5)


def test_gradients_reach_the_curvature_and_alphas():
    model = tiny_hysac()
    input_ids, pixel_values = sample_inputs()
    out = model(input_ids=input_ids, pixel_values=pixel_values)
    loss = torch.nn.functional.cross_entropy(out["logits_per_text"], torch.arange(3))
    loss.backward()
    for name in ("log_curvature", "log_text_alpha", "log_image_alpha", "logit_scale"):
        grad = getattr(model, name).grad
        assert grad is not None and torch.isfinite(grad) and grad != 0, name


# ----------------------------------------------------------------------- our export


def test_save_and_load_our_export_round_trips(tmp_path):
    model = tiny_hysac(bounds=HySACBounds.from_dict(BOUNDS), base_model="tiny/base")
    with torch.no_grad():
        model.log_curvature.fill_(math.log(0.6))
        model.log_text_alpha.fill_(-1.5)
    folder = model.save_pretrained(tmp_path / "export")
    assert read_encoder_header(folder / "text_encoder.safetensors").kind == "text"
    assert read_encoder_header(folder / "vision_encoder.safetensors").kind == "vision"
    config = json.loads((folder / "hysac_config.json").read_text())
    assert config["format"] == "safe_encoders.hysac" and config["format_version"] == 1
    assert config["curvature"] == pytest.approx(0.6) and config["bounds"] == BOUNDS
    # the encoder files are ordinary safe-encoders files
    assert load_text_encoder(folder / "text_encoder.safetensors").config.hidden_size == 32

    loaded = HySAC.from_pretrained(folder, load_processors=False)
    input_ids, pixel_values = sample_inputs()
    with torch.no_grad():
        assert torch.equal(loaded.encode_text(input_ids), model.encode_text(input_ids))
        assert torch.equal(loaded.encode_image(pixel_values), model.encode_image(pixel_values))
    for name in ("log_curvature", "log_text_alpha", "log_image_alpha", "logit_scale"):
        assert getattr(loaded, name).item() == getattr(model, name).item()
    assert loaded.bounds.threshold("text") == 0.5 and loaded.bounds.threshold("image") == 0.7
    assert loaded.base_model == "tiny/base"


def test_export_refuses_unmerged_lora_and_detects_swapped_files(tmp_path):
    text, vision = peft_towers()
    model = HySAC(text, vision)
    with pytest.raises(TypeError, match="merge_lora"):
        model.save_pretrained(tmp_path / "a")
    model.merge_lora().save_pretrained(tmp_path / "a")
    tiny_hysac(seed=5).save_pretrained(tmp_path / "b")
    (tmp_path / "a" / "text_encoder.safetensors").write_bytes(
        (tmp_path / "b" / "text_encoder.safetensors").read_bytes()
    )
    with pytest.raises(CorruptCheckpointError, match=r"is not the file hysac_config\.json was written with"):
        HySAC.from_pretrained(tmp_path / "a", load_processors=False)


def test_merge_lora_keeps_the_embeddings(tmp_path):
    text, vision = peft_towers()
    model = HySAC(text, vision)
    input_ids, pixel_values = sample_inputs()
    with torch.no_grad():
        before = model.encode_text(input_ids), model.encode_image(pixel_values)
        model.merge_lora()
        after = model.encode_text(input_ids), model.encode_image(pixel_values)
    assert not hasattr(model.text, "merge_and_unload")
    assert torch.allclose(before[0], after[0], atol=1e-5) and torch.allclose(before[1], after[1], atol=1e-5)


# ------------------------------------------------------------------ authors' release


def _write_release(folder, state, bounds=BOUNDS):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "hysac_model.pth")
    if bounds is not None:
        (folder / "hysac_bounds.json").write_text(json.dumps(bounds))
    return folder


@pytest.mark.parametrize(
    "prefixes",
    [("textual.", "visual."), ("module.textual.", "module.visual."), ("model.text_encoder.", "model.vision_encoder.")],
    ids=["authors", "ddp", "other-names"],
)
def test_release_loads_and_merges_lora_with_peft(tmp_path, caplog, prefixes):
    text, vision = peft_towers(rank=4, lora_alpha=2.0)
    state = release_state(text, vision, prefixes=prefixes)
    state["some_other_module.weight"] = torch.zeros(3)
    release = _write_release(tmp_path / "release", state)
    base = tiny_base_folder(tmp_path / "base", seed=7)  # base weights differ: the file's must win
    with caplog.at_level(logging.WARNING, logger="safe_encoders"):
        model = HySAC.from_pretrained(release, base_model=str(base), lora_alpha=2.0, load_processors=False)
    assert "some_other_module.weight" in caplog.text and "match nothing" in caplog.text
    assert "pixel_mean" not in caplog.text.split("match nothing")[-1]
    input_ids, pixel_values = sample_inputs()
    expected_text, expected_image = expected_points(text, vision, input_ids, pixel_values)
    with torch.no_grad():
        assert torch.allclose(model.encode_text(input_ids), expected_text, atol=1e-5)
        assert torch.allclose(model.encode_image(pixel_values), expected_image, atol=1e-5)
    assert model.curvature.item() == pytest.approx(RELEASE_SCALARS["curv"])
    assert model.logit_scale.exp().item() == pytest.approx(RELEASE_SCALARS["logit_scale"])
    assert model.bounds.threshold("text") == 0.5
    assert not hasattr(model.text, "merge_and_unload")  # plain towers after the merge


def test_release_lora_alpha_is_the_scaling(tmp_path):
    text, vision = peft_towers(rank=4, lora_alpha=2.0)
    release = _write_release(tmp_path / "release", release_state(text, vision))
    base = tiny_base_folder(tmp_path / "base")
    input_ids, _ = sample_inputs()
    right = HySAC.from_pretrained(release, base_model=str(base), lora_alpha=2.0, load_processors=False)
    wrong = HySAC.from_pretrained(release, base_model=str(base), lora_alpha=8.0, load_processors=False)
    with torch.no_grad():
        assert not torch.allclose(right.encode_text(input_ids), wrong.encode_text(input_ids), atol=1e-4)


def test_lora_only_release_takes_base_weights_from_the_base_model(tmp_path):
    from peft import get_peft_model_state_dict

    text, vision = peft_towers(seed=0)
    state = {"textual." + k: v for k, v in get_peft_model_state_dict(text).items()}
    state.update({"visual." + k: v for k, v in get_peft_model_state_dict(vision).items()})
    for name, value in RELEASE_SCALARS.items():
        state[name] = torch.tensor(value).log()
    assert not any("base_layer" in k for k in state) and not any(".default." in k for k in state)
    release = _write_release(tmp_path / "release", state, bounds=None)
    base = tiny_base_folder(tmp_path / "base", seed=0)  # the same base the LoRA was trained on
    model = HySAC.from_pretrained(release, base_model=str(base), lora_alpha=2.0, load_processors=False)
    input_ids, pixel_values = sample_inputs()
    expected_text, expected_image = expected_points(text, vision, input_ids, pixel_values)
    with torch.no_grad():
        assert torch.allclose(model.encode_text(input_ids), expected_text, atol=1e-5)
        assert torch.allclose(model.encode_image(pixel_values), expected_image, atol=1e-5)
    assert model.bounds is None


def test_release_missing_entries_fail_loudly(tmp_path):
    text, vision = peft_towers()
    base = str(tiny_base_folder(tmp_path / "base"))
    state = release_state(text, vision)
    del state["visual_alpha"]
    with pytest.raises(CorruptCheckpointError, match=r"lacks log_image_alpha .*visual_alpha"):
        HySAC.from_pretrained(_write_release(tmp_path / "a", state), base_model=base, load_processors=False)
    state = release_state(text, vision)
    del state["textual.base_model.model.text_model.encoder.layers.0.self_attn.k_proj.lora_B.default.weight"]
    with pytest.raises(CorruptCheckpointError, match="LoRA factors without their pair"):
        HySAC.from_pretrained(_write_release(tmp_path / "b", state), base_model=base, load_processors=False)
    state = {k: v for k, v in release_state(text, vision).items() if not k.startswith("visual.")}
    with pytest.raises(CorruptCheckpointError, match="found no vision-tower tensors"):
        HySAC.from_pretrained(_write_release(tmp_path / "c", state), base_model=base, load_processors=False)


def test_release_on_the_wrong_base_model_is_an_architecture_mismatch(tmp_path):
    text, vision = peft_towers()
    release = _write_release(tmp_path / "release", release_state(text, vision))
    from tests.tiny_models import save_clip_repo

    other = save_clip_repo(tiny_clip_model(0, hidden=48), tmp_path / "wide")
    with pytest.raises(ArchitectureMismatchError, match="do not fit the base model"):
        HySAC.from_pretrained(release, base_model=str(other), load_processors=False)


class _Exploit:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_pickled_object_is_refused_without_executing_it(tmp_path, writer):
    marker = tmp_path / "pwned"
    folder = tmp_path / "release"
    folder.mkdir()
    payload = {"curv": _Exploit(marker), "textual_alpha": torch.tensor(0.0)}
    if writer == "torch.save":
        torch.save(payload, folder / "hysac_model.pth")
    else:
        with open(folder / "hysac_model.pth", "wb") as handle:
            pickle.dump(payload, handle)
    # sanity: the payload really would create the file if unpickled naively
    assert pickle.loads(pickle.dumps(_Exploit(tmp_path / "proof"))) is not None and (tmp_path / "proof").exists()
    with pytest.raises(UnsafeFormatError, match="Refusing"):
        HySAC.from_pretrained(folder, base_model=str(tmp_path), load_processors=False)
    assert not marker.exists()


# ------------------------------------------------------------------------------- Hub


def _cache_base(cache, seed=0):
    base = tiny_base_folder(cache.parent / f"base-src-{seed}", seed=seed)
    write_hub_cache(cache, "tiny/clip", {n: base / n for n in ("config.json", "model.safetensors")})


@pytest.mark.parametrize("cached_as", ["aimagelab/HySAC", "aimagelab/hysac"])
def test_release_from_the_hub_cache_by_id_and_registry_name(tmp_path, monkeypatch, cached_as):
    """Either spelling in the cache (the authors' code fills models--aimagelab--HySAC) is found offline,
    whichever spelling the user writes; HF_HUB_CACHE (huggingface_hub's default) as a user sets it."""
    from huggingface_hub import constants

    cache = tmp_path / "cache"
    text, vision = peft_towers()
    release = _write_release(tmp_path / "release", release_state(text, vision))
    write_hub_cache(cache, cached_as, {n: release / n for n in ("hysac_model.pth", "hysac_bounds.json")})
    _cache_base(cache)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    input_ids, pixel_values = sample_inputs()
    expected_text, _ = expected_points(text, vision, input_ids, pixel_values)
    for source in ("aimagelab/hysac", "aimagelab/HySAC", "hysac", "hf-hub:aimagelab/HySAC"):
        model = HySAC.from_pretrained(source, base_model="tiny/clip", lora_alpha=2.0)
        with torch.no_grad():
            assert torch.allclose(model.encode_text(input_ids), expected_text, atol=1e-5)
        assert model.bounds.threshold("image") == 0.7
        assert model.tokenizer is None and model.image_processor is None  # none in the cache: skipped quietly


def test_hub_spelling_keeps_the_users_spelling(tmp_path):
    from safe_encoders.registry import get_checkpoint, hub_spelling

    entry = get_checkpoint("aimagelab/hysac")
    assert entry is get_checkpoint("aimagelab/HySAC") is get_checkpoint("hysac")
    empty = tmp_path / "empty"
    assert hub_spelling(entry, "aimagelab/hysac", empty) == "aimagelab/hysac"  # nothing cached: as written
    assert hub_spelling(entry, "hf-hub:aimagelab/HySAC", empty) == "aimagelab/HySAC"
    assert hub_spelling(entry, "hysac", empty) == "aimagelab/HySAC"  # the authors' link
    both = tmp_path / "both"
    for name in ("models--aimagelab--HySAC", "models--aimagelab--hysac"):
        (both / name).mkdir(parents=True)
    assert hub_spelling(entry, "aimagelab/hysac", both) == "aimagelab/hysac"
    assert hub_spelling(entry, "aimagelab/HySAC", both) == "aimagelab/HySAC"
    (both / "models--aimagelab--HySAC").rmdir()
    assert hub_spelling(entry, "aimagelab/HySAC", both) == "aimagelab/hysac"  # the cached spelling


def test_our_export_from_the_hub_cache(tmp_path):
    cache = tmp_path / "cache"
    model = tiny_hysac(bounds=HySACBounds.from_dict(BOUNDS))
    folder = model.save_pretrained(tmp_path / "export")
    names = ("hysac_config.json", "text_encoder.safetensors", "vision_encoder.safetensors")
    write_hub_cache(cache, "someone/hysac-export", {n: folder / n for n in names})
    loaded = HySAC.from_pretrained("someone/hysac-export", cache_dir=cache)
    input_ids, _ = sample_inputs()
    with torch.no_grad():
        assert torch.equal(loaded.encode_text(input_ids), model.encode_text(input_ids))


def test_hub_misses_say_what_to_do(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="not in the local Hugging Face cache"):
        HySAC.from_pretrained("aimagelab/hysac", cache_dir=tmp_path / "empty")
    with pytest.raises(CheckpointNotFoundError, match=r"neither hysac_config\.json"):
        HySAC.from_pretrained(tmp_path)
    with pytest.raises(CheckpointNotFoundError, match="not an existing file or folder"):
        HySAC.from_pretrained("no such thing")
    with pytest.raises(TypeError, match="Unknown keyword"):
        HySAC.from_pretrained("aimagelab/hysac", revison="main")
