"""Full-size architecture checks against the real Hub configs, on the meta device (no weights)."""

import pytest
import torch

from safe_encoders import ArchitectureMismatchError, make_safe, swap_report
from safe_encoders.format import PROJECTION, canonical_name
from safe_encoders.sources.encoder_source import EncoderSource
from safe_encoders.sources.transformers_checkpoint import encoder_config_from_dict
from safe_encoders.swap import plan_swap
from tests.tiny_models import HUB_FIXTURES, hub_config, write_hub_cache


def meta_clip_source(repo: str, kind: str) -> EncoderSource:
    """Tensor names and shapes of a full-size CLIPModel built on `meta` from a real config, as our reader sees them."""
    from transformers import CLIPConfig, CLIPModel

    raw = hub_config(repo)
    config, belongs = encoder_config_from_dict(raw, kind, label=repo)
    with torch.device("meta"):
        model = CLIPModel(CLIPConfig.from_dict(raw))
    shapes = {canonical_name(k, kind): tuple(v.shape) for k, v in model.state_dict().items() if belongs(k)}
    return EncoderSource(kind=kind, config=config, shapes=shapes, label=repo, identity=repo)


def meta_text_encoder(repo: str, subfolder: str = "text_encoder"):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    raw = hub_config(repo, subfolder)
    cls = CLIPTextModelWithProjection if raw["architectures"] == ["CLIPTextModelWithProjection"] else CLIPTextModel
    with torch.device("meta"):
        return cls(CLIPTextConfig.from_dict(raw))


@pytest.mark.parametrize(
    "pipeline_repo",
    ["CompVis/stable-diffusion-v1-4", "runwayml/stable-diffusion-v1-5", "stabilityai/stable-diffusion-xl-base-1.0"],
)
def test_vit_l_text_tower_fills_sd1_and_sdxl_text_encoder_exactly(pipeline_repo):
    target = meta_text_encoder(pipeline_repo)
    plan = plan_swap(target, meta_clip_source("openai/clip-vit-large-patch14", "text"), "pipe.text_encoder")
    assert not plan.truncated and plan.layers_used == 12
    assert len(plan.names) == len([k for k in target.state_dict() if not k.endswith("position_ids")]) == 196
    assert PROJECTION["text"] not in plan.names  # CLIPTextModel has no projection: it is not read


@pytest.mark.parametrize("pipeline_repo", ["stabilityai/stable-diffusion-2-1", "stabilityai/stable-diffusion-2-1-base"])
def test_vit_h_text_tower_is_cut_to_sd2s_23_layers(pipeline_repo):
    target = meta_text_encoder(pipeline_repo)
    assert target.config.num_hidden_layers == 23
    source = meta_clip_source("aimagelab/safeclip_vit-h_14", "text")
    assert source.fingerprint.num_layers == 24
    plan = plan_swap(target, source, "pipe.text_encoder")
    assert plan.truncated and plan.layers_used == 23
    read = set(plan.names)
    assert "text_model.encoder.layers.22.mlp.fc2.weight" in read
    assert not any(".layers.23." in name for name in read)
    assert "text_model.final_layer_norm.weight" in read
    assert source.shapes["text_model.embeddings.token_embedding.weight"] == (49408, 1024)


def test_sd2_with_the_vit_l_checkpoint_names_the_one_that_fits():
    target = meta_text_encoder("stabilityai/stable-diffusion-2-1")
    with pytest.raises(
        ArchitectureMismatchError, match=r"text 768w x 12L.*text 1024w x 23L.*fit it: safeclip-sd-20, safeclip-vit-h-14"
    ):
        plan_swap(target, meta_clip_source("openai/clip-vit-large-patch14", "text"), "pipe.text_encoder")


def test_sdxl_bigg_encoder_is_refused_by_every_published_tower():
    target = meta_text_encoder("stabilityai/stable-diffusion-xl-base-1.0", "text_encoder_2")
    for repo in ("openai/clip-vit-large-patch14", "aimagelab/safeclip_vit-h_14"):
        with pytest.raises(ArchitectureMismatchError, match=r"No registered Safe-CLIP checkpoint fits it"):
            plan_swap(target, meta_clip_source(repo, "text"), "pipe.text_encoder_2")


@pytest.mark.slow
def test_auto_resolves_the_registry_hub_id_through_the_cache_at_full_size(tmp_path):
    """SD v1.4's real text encoder config, `checkpoint="auto"`, a Hub cache holding aimagelab/safeclip_vit-l_14."""
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    source = meta_clip_source("openai/clip-vit-large-patch14", "text")
    generator = torch.Generator().manual_seed(0)
    tensors = {name: torch.randn(shape, generator=generator, dtype=torch.float32).to(torch.float16)
               for name, shape in source.shapes.items()}  # fmt: skip
    weights = tmp_path / "model.safetensors"
    save_file(tensors, weights, metadata={"format": "pt"})  # a text-only stand-in: vision is never read
    config = tmp_path / "config.json"
    config.write_text((HUB_FIXTURES / "openai__clip-vit-large-patch14" / "config.json").read_text())
    cache = tmp_path / "cache"
    commit = write_hub_cache(
        cache, "aimagelab/safeclip_vit-l_14", {"config.json": config, "model.safetensors": weights}
    )
    weights.unlink()

    with init_empty_weights(include_buffers=False):
        encoder = CLIPTextModel(CLIPTextConfig.from_dict(hub_config("CompVis/stable-diffusion-v1-4", "text_encoder")))
    encoder.to_empty(device="cpu").to(torch.float16)
    make_safe(encoder, "auto", cache_dir=cache)
    assert swap_report(encoder)["CLIPTextModel"]["identity"] == f"hf:aimagelab/safeclip_vit-l_14@{commit}"
    got = encoder.state_dict()
    assert torch.equal(got["encoder.layers.11.mlp.fc2.weight"], tensors["text_model.encoder.layers.11.mlp.fc2.weight"])
    assert torch.equal(
        got["embeddings.token_embedding.weight"], tensors["text_model.embeddings.token_embedding.weight"]
    )


@pytest.mark.parametrize(
    ("repo", "class_name"),
    [
        ("llava-hf/llava-1.5-7b-hf", "LlavaForConditionalGeneration"),
        ("llava-hf/llava-v1.6-mistral-7b-hf", "LlavaNextForConditionalGeneration"),
    ],
)
def test_clip_336_vision_tower_fills_the_real_llava_towers(repo, class_name):
    import transformers

    from safe_encoders.llava import vision_tower_slots
    from safe_encoders.registry import find_checkpoint

    raw = hub_config(repo)
    config_class = getattr(transformers, class_name.replace("ForConditionalGeneration", "Config"))
    with torch.device("meta"):
        model = getattr(transformers, class_name)(config_class.from_dict(raw))
    (slot,) = vision_tower_slots(model)
    assert slot.label == "model.model.vision_tower" and slot.kind == "vision"
    assert find_checkpoint(slot.module.config).name == "safeclip-vit-l-14-336"
    plan = plan_swap(slot.module, meta_clip_source("openai/clip-vit-large-patch14-336", "vision"), slot.label)
    assert not plan.truncated and plan.layers_used == 24
    assert PROJECTION["vision"] not in plan.names  # LLaVA's tower has no projection head
    tower_keys = [k for k in slot.module.state_dict() if not k.endswith("position_ids")]
    assert sorted(plan.names.values()) == sorted(tower_keys)
    assert model.config.vision_feature_layer == raw["vision_feature_layer"] == -2
    assert model.config.vision_feature_select_strategy == "default"


def test_a_224px_checkpoint_does_not_fit_llava_15():
    import transformers

    raw = hub_config("llava-hf/llava-1.5-7b-hf")
    with torch.device("meta"):
        model = transformers.LlavaForConditionalGeneration(transformers.LlavaConfig.from_dict(raw))
    with pytest.raises(ArchitectureMismatchError, match=r"224px/14 encoder.*336px/14.*image_size 224 != 336.*"
                       r"fit it: safeclip-vit-l-14-336"):  # fmt: skip
        plan_swap(model.model.vision_tower, meta_clip_source("openai/clip-vit-large-patch14", "vision"), "tower")
