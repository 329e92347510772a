import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from safe_encoders import CorruptCheckpointError, export_encoder, load_text_encoder, load_vision_encoder
from safe_encoders.format import (
    canonical_name,
    combined_digest,
    module_names,
    read_encoder_header,
    tensor_digest,
    write_encoder_file,
)
from tests.tiny_models import tiny_clip_model, tiny_text_encoder


def test_canonical_names_are_the_published_ones_for_both_transformers_namings():
    # transformers 5 CLIPTextModel: no prefix; transformers 4 and ...WithProjection: prefixed.
    assert canonical_name("embeddings.token_embedding.weight", "text") == "text_model.embeddings.token_embedding.weight"
    assert canonical_name("text_model.final_layer_norm.bias", "text") == "text_model.final_layer_norm.bias"
    assert canonical_name("text_projection.weight", "text") == "text_projection.weight"
    assert canonical_name("pre_layrnorm.weight", "vision") == "vision_model.pre_layrnorm.weight"
    assert canonical_name("visual_projection.weight", "vision") == "visual_projection.weight"
    v4_keys = ["text_model.embeddings.position_ids", "text_model.embeddings.token_embedding.weight"]
    assert module_names(v4_keys, "text") == {v4_keys[1]: v4_keys[1]}  # derived buffers are left out


def test_exported_file_uses_published_names_whatever_the_module_naming(tmp_path):
    plain = tiny_text_encoder(0)  # transformers 5: keys without text_model.
    with_projection = tiny_text_encoder(0, projection=True)  # keys with text_model.
    with safe_open(export_encoder(plain, tmp_path / "a.safetensors"), "pt") as f:
        plain_keys = set(f.keys())
    with safe_open(export_encoder(with_projection, tmp_path / "b.safetensors"), "pt") as f:
        projection_keys = set(f.keys())
    assert all(k.startswith("text_model.") for k in plain_keys)
    assert projection_keys == plain_keys | {"text_projection.weight"}


def test_transformers4_named_file_loads_into_transformers5_modules(tmp_path):
    """A file whose names carry text_model. (as every published checkpoint does) fills a module without them."""
    clip = tiny_clip_model(3)
    text_state = {k: v for k, v in clip.state_dict().items() if k.startswith("text_model.")}
    path, _ = write_encoder_file(
        tmp_path / "t.safetensors",
        text_state,
        kind="text",
        config=clip.config.text_config.to_dict(),
        base_model="tiny",
        provenance={"kind": "test"},
    )
    encoder = load_text_encoder(path)
    assert type(encoder).__name__ == "CLIPTextModel"
    for key, value in encoder.state_dict().items():
        if not key.endswith("position_ids"):
            torch.testing.assert_close(value, text_state[canonical_name(key, "text")], rtol=0, atol=0)


def test_header_carries_kind_config_base_model_provenance_and_digest(tmp_path):
    encoder = tiny_text_encoder(1)
    path = export_encoder(
        encoder,
        tmp_path,
        base_model="openai/clip-vit-large-patch14",
        metadata={"provenance": "trained", "lora_rank": 16},
    )
    assert path.name == "text_encoder.safetensors"
    info = read_encoder_header(path)
    assert info.kind == "text"
    assert info.base_model == "openai/clip-vit-large-patch14"
    assert info.provenance == {"kind": "trained", "lora_rank": 16}
    assert info.config["num_hidden_layers"] == 3 and info.config["hidden_act"] == "quick_gelu"
    assert info.format_version == 1
    digests = {name: tensor_digest(t) for name, t in _read_all(path).items()}
    assert info.tensor_digests == digests
    assert info.digest == combined_digest(digests)


def test_digest_depends_on_values_dtype_and_shape():
    base = torch.arange(6, dtype=torch.float32)
    assert tensor_digest(base) == tensor_digest(base.clone())
    assert tensor_digest(base) != tensor_digest(base.to(torch.float64))
    assert tensor_digest(base) != tensor_digest(base.reshape(2, 3))
    changed = base.clone()
    changed[3] += 1e-6
    assert tensor_digest(base) != tensor_digest(changed)
    assert tensor_digest(base.to(torch.bfloat16)) != tensor_digest(base.to(torch.float16))


def test_a_modified_tensor_is_caught_on_load(tmp_path):
    path = export_encoder(tiny_text_encoder(0), tmp_path / "t.safetensors")
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # flip bits in the last tensor's bytes; the header stays valid
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match=r"does not match the digest recorded in the file"):
        load_text_encoder(path)


def test_truncated_file_gives_a_clear_error(tmp_path):
    path = export_encoder(tiny_text_encoder(0), tmp_path / "t.safetensors")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CorruptCheckpointError, match=r"not a readable safetensors file.*export it again"):
        load_text_encoder(path)


def test_plain_safetensors_without_our_metadata_is_explained(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, path)
    with pytest.raises(CorruptCheckpointError, match=r"not a safe-encoders encoder file.*config.json"):
        load_text_encoder(path)


def test_newer_format_version_asks_for_an_upgrade(tmp_path):
    path = export_encoder(tiny_text_encoder(0), tmp_path / "t.safetensors")
    with safe_open(path, "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    save_file(tensors, path, metadata={**meta, "safe_encoders.format_version": "99"})
    with pytest.raises(CorruptCheckpointError, match=r"format version 99.*Upgrade safe-encoders"):
        read_encoder_header(path)


def test_write_is_atomic_a_failed_write_keeps_the_old_file(tmp_path):
    path = export_encoder(tiny_text_encoder(0), tmp_path / "t.safetensors")
    before = path.read_bytes()
    bad = {"text_model.x": torch.zeros(2), "text_model.y": torch.zeros(2)}
    bad["text_model.y"] = bad["text_model.x"]  # shared storage: safetensors refuses to save it
    with pytest.raises(RuntimeError):
        write_encoder_file(path, {"text_model.x": bad["text_model.x"], "text_model.y": bad["text_model.x"][:1]},
                           kind="text", config={}, base_model=None, provenance={})  # fmt: skip
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]


def test_writer_rejects_names_of_the_other_encoder(tmp_path):
    with pytest.raises(ValueError, match=r"not text-encoder names"):
        write_encoder_file(tmp_path / "x.safetensors", {"vision_model.a": torch.zeros(1)}, kind="text",
                           config={}, base_model=None, provenance={})  # fmt: skip


def test_vision_export_roundtrip_gives_identical_image_features(tmp_path):
    clip = tiny_clip_model(4)
    from transformers import CLIPVisionModelWithProjection

    vision = CLIPVisionModelWithProjection(clip.config.vision_config).eval()
    vision.vision_model.load_state_dict(clip.vision_model.state_dict())
    vision.visual_projection.load_state_dict(clip.visual_projection.state_dict())
    path = export_encoder(vision, tmp_path)
    assert json.loads(json.dumps(read_encoder_header(path).config))["image_size"] == 30
    reloaded = load_vision_encoder(path)
    pixels = torch.randn(2, 3, 30, 30)
    with torch.no_grad():
        assert torch.equal(vision(pixel_values=pixels).image_embeds, reloaded(pixel_values=pixels).image_embeds)


def _read_all(path):
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
