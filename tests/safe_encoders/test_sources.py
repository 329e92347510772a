import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from safe_encoders import (
    ArchitectureMismatchError,
    CheckpointNotFoundError,
    UnsafeFormatError,
    convert_checkpoint,
    load_text_encoder,
    load_vision_encoder,
)
from safe_encoders.format import read_encoder_header
from safe_encoders.sources import resolve_source
from tests.tiny_models import save_clip_repo, tiny_clip_model, write_hub_cache

REPO_ROOT = Path(__file__).resolve().parents[2]


def _text_features(model, encoder):
    ids = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407]])
    with torch.no_grad():
        reference = model.get_text_features(input_ids=ids)
        reference = getattr(reference, "pooler_output", reference)  # transformers 5 returns an output object
        return reference, encoder(input_ids=ids).text_embeds


def test_local_clipmodel_folder_gives_the_same_text_features(tmp_path):
    model = tiny_clip_model(0)
    folder = save_clip_repo(model, tmp_path / "clip")
    encoder = load_text_encoder(folder)
    assert type(encoder).__name__ == "CLIPTextModelWithProjection"
    reference, ours = _text_features(model, encoder)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


def test_sharded_checkpoint_reads_only_the_shards_of_the_requested_encoder(tmp_path):
    from safetensors.torch import save_file

    model = tiny_clip_model(0)
    folder = save_clip_repo(model, tmp_path / "clip")
    (folder / "model.safetensors").unlink()
    state = model.state_dict()
    shards = {"model-00001-of-00002.safetensors": [k for k in state if k.startswith("vision_model.")]}
    shards["model-00002-of-00002.safetensors"] = [
        k for k in state if k not in shards["model-00001-of-00002.safetensors"]
    ]
    for shard, keys in shards.items():
        save_file({k: state[k].contiguous() for k in keys}, folder / shard, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "model-00001-of-00002.safetensors").unlink()  # the text load must not need the vision shard
    reference, ours = _text_features(model, load_text_encoder(folder))
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


def test_convert_checkpoint_splits_without_instantiating_clipmodel(tmp_path, monkeypatch):
    model = tiny_clip_model(1)
    folder = save_clip_repo(model, tmp_path / "clip")
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("convert_checkpoint must not build a CLIPModel")

    monkeypatch.setattr(transformers.CLIPModel, "__init__", refuse)
    files = convert_checkpoint(folder, tmp_path / "out")
    assert set(files) == {"text", "vision"}
    assert read_encoder_header(files["text"]).provenance["kind"] == "converted"
    vision = load_vision_encoder(tmp_path / "out")  # the output folder is itself a source
    pixels = torch.randn(1, 3, 30, 30)
    with torch.no_grad():
        expected = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        torch.testing.assert_close(vision(pixel_values=pixels).image_embeds, expected, rtol=0, atol=1e-6)


def test_dtype_device_and_projection_options(tmp_path):
    folder = save_clip_repo(tiny_clip_model(0), tmp_path / "clip")
    encoder = load_text_encoder(folder, torch_dtype=torch.bfloat16, device="cpu", with_projection=False)
    assert type(encoder).__name__ == "CLIPTextModel"
    assert {p.dtype for p in encoder.parameters()} == {torch.bfloat16}
    assert not encoder.training


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickle_weights_are_read_weights_only_and_an_exploit_is_refused(tmp_path, monkeypatch, caplog):
    model = tiny_clip_model(2)
    folder = tmp_path / "clip"
    model.save_pretrained(folder, safe_serialization=True)
    state = {k: v for k, v in model.state_dict().items()}
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with caplog.at_level("WARNING", logger="safe_encoders"):
        reference, ours = _text_features(model, load_text_encoder(folder))
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
    assert "weights_only=True" in caplog.text

    import pickle

    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"text_model.x": _Exploit()}))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsafeFormatError, match=r"Refusing .*pytorch_model.bin.*safetensors"):
        load_text_encoder(folder)
    assert not (tmp_path / "pwned").exists()


def test_bare_pickle_file_and_unknown_names_are_explained(tmp_path):
    bare = tmp_path / "weights.pt"
    torch.save({"a": torch.zeros(1)}, bare)
    with pytest.raises(CheckpointNotFoundError, match=r"no config.json beside it"):
        load_text_encoder(bare)
    with pytest.raises(CheckpointNotFoundError, match=r"not an existing file or folder.*safeclip-vit-l-14"):
        load_text_encoder("no such thing")
    with pytest.raises(CheckpointNotFoundError, match=r"holds neither text_encoder.safetensors"):
        load_text_encoder(tmp_path)
    with pytest.raises(TypeError, match=r"Unknown keyword argument\(s\) \['revison'\]"):
        load_text_encoder("org/name", revison="main")


def test_text_only_checkpoint_has_no_vision_encoder(tmp_path):
    from tests.tiny_models import tiny_text_encoder

    folder = tmp_path / "te"
    tiny_text_encoder(0).save_pretrained(folder)
    assert resolve_source(folder, "text").kind == "text"
    with pytest.raises(ArchitectureMismatchError, match=r"is a CLIP text encoder .*a vision encoder was asked for"):
        load_vision_encoder(folder)


def test_explicit_weights_file_with_a_non_standard_name_is_loaded(tmp_path):
    from tests.tiny_models import tiny_text_encoder

    original = tiny_text_encoder(0)
    folder = tmp_path / "te"
    original.save_pretrained(folder)
    renamed = folder / "model-fp16.safetensors"
    (folder / "model.safetensors").rename(renamed)
    loaded = load_text_encoder(renamed)
    assert type(loaded).__name__ == "CLIPTextModel"
    expected, actual = original.state_dict(), loaded.state_dict()
    assert set(actual) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=0, atol=0)


def test_a_stale_swap_record_in_a_saved_config_is_not_carried_over(tmp_path):
    from tests.tiny_models import tiny_text_encoder

    encoder = tiny_text_encoder(0)
    encoder.config.safe_encoders = {"checkpoint": "old", "digest": "sha256:stale"}
    folder = tmp_path / "te"
    encoder.save_pretrained(folder)
    assert "safe_encoders" in json.loads((folder / "config.json").read_text())
    assert "safe_encoders" not in resolve_source(folder, "text").config
    files = convert_checkpoint(folder, tmp_path / "out")
    assert "safe_encoders" not in read_encoder_header(files["text"]).config
    assert set(convert_checkpoint(folder, tmp_path / "out")) == {"text"}


# --------------------------------------------------------------------------------- the Hub path


def _cache_with_tiny_repo(tmp_path, repo_id, *, revision="main"):
    model = tiny_clip_model(5)
    folder = save_clip_repo(model, tmp_path / "src")
    cache = tmp_path / "hub-cache"
    commit = write_hub_cache(
        cache,
        repo_id,
        {"config.json": folder / "config.json", "model.safetensors": folder / "model.safetensors"},
        revision=revision,
    )
    return model, cache, commit


def test_hub_id_loads_from_a_local_hub_cache_offline(tmp_path):
    model, cache, commit = _cache_with_tiny_repo(tmp_path, "someorg/tiny-clip")
    source = resolve_source("someorg/tiny-clip", "text", cache_dir=cache)
    assert source.identity == f"hf:someorg/tiny-clip@{commit}"
    reference, ours = _text_features(model, load_text_encoder("hf-hub:someorg/tiny-clip", cache_dir=cache))
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


def test_hub_revision_is_honoured(tmp_path):
    _, cache, _ = _cache_with_tiny_repo(tmp_path, "someorg/tiny-clip", revision="v1.0")
    assert load_text_encoder("someorg/tiny-clip", revision="v1.0", cache_dir=cache) is not None
    with pytest.raises(CheckpointNotFoundError, match=r"not in the local Hugging Face cache"):
        load_text_encoder("someorg/tiny-clip", revision="v2.0", cache_dir=cache)


def test_offline_with_no_cached_copy_says_how_to_fix_it(tmp_path):
    with pytest.raises(
        CheckpointNotFoundError,
        match=r"someorg/absent@main: config.json is not in the local Hugging Face cache.*"
        r"HF_HUB_OFFLINE=1.*hf download someorg/absent",
    ):
        load_text_encoder("someorg/absent", cache_dir=tmp_path)


def test_registry_name_resolves_to_its_hub_id_through_hf_hub_cache_env(tmp_path):
    """A real subprocess with HF_HUB_OFFLINE=1 and HF_HUB_CACHE, as a user would run it."""
    model, cache, commit = _cache_with_tiny_repo(tmp_path, "aimagelab/safeclip_vit-l_14")
    script = (
        "import torch, safe_encoders\n"
        "e = safe_encoders.load_text_encoder('safeclip-vit-l-14')\n"
        "print(e.config.safe_encoders['identity'])\n"
        "ids = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407]])\n"
        "torch.save(e(input_ids=ids).text_embeds.detach(), 'out.pt')\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == f"hf:aimagelab/safeclip_vit-l_14@{commit}"
    reference, _ = _text_features(model, load_text_encoder(tmp_path / "src"))
    torch.testing.assert_close(torch.load(tmp_path / "out.pt", weights_only=True), reference, rtol=0, atol=1e-6)


def test_hub_subfolder_of_a_diffusers_repo(tmp_path):
    """load_text_encoder("CompVis/stable-diffusion-v1-4", subfolder="text_encoder") reads the SD text encoder."""
    from tests.tiny_models import tiny_text_encoder

    encoder = tiny_text_encoder(3)
    folder = tmp_path / "te"
    encoder.save_pretrained(folder)
    cache = tmp_path / "cache"
    commit = write_hub_cache(
        cache,
        "someorg/tiny-sd",
        {
            "text_encoder/config.json": folder / "config.json",
            "text_encoder/model.safetensors": folder / "model.safetensors",
        },
    )
    loaded = load_text_encoder("someorg/tiny-sd", subfolder="text_encoder", cache_dir=cache)
    assert loaded.config.safe_encoders["identity"] == f"hf:someorg/tiny-sd@{commit}"
    assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_hub_repo_holding_our_files_only(tmp_path):
    from safe_encoders import export_encoder
    from tests.tiny_models import tiny_text_encoder

    encoder = tiny_text_encoder(4)
    file = export_encoder(encoder, tmp_path / "text_encoder.safetensors", base_model="tiny/base")
    cache = tmp_path / "cache"
    write_hub_cache(cache, "someorg/exported", {"text_encoder.safetensors": file})
    loaded = load_text_encoder("someorg/exported", cache_dir=cache)
    assert loaded.config.safe_encoders["base_model"] == "tiny/base"
    assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in loaded.state_dict().items())
