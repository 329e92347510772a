import copy

import numpy as np
import pytest
import torch
from torch import nn

from safe_encoders import (
    ArchitectureMismatchError,
    CheckpointNotFoundError,
    UnsupportedModelError,
    export_encoder,
    is_safe,
    load_vision_encoder,
    make_safe,
    swap_report,
)
from tests.tiny_models import HUB_FIXTURES, tiny_vision_config

LLAVA_DIR = HUB_FIXTURES / "llava-hf__llava-1.5-7b-hf"
PINPOINTS = [[30, 60], [60, 30], [60, 60]]


def _text_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=32064, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=32001,
    )  # fmt: skip


def tiny_llava(next_: bool = False, seed: int = 0):
    """A tiny random LLaVA 1.5 (or 1.6 with `next_`) model and its processor, built offline."""
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessor,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
        LlavaProcessor,
    )

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(LLAVA_DIR)
    common = dict(
        vision_config=tiny_vision_config(image_size=30).to_dict(), text_config=_text_config().to_dict(),
        image_token_index=32000, vision_feature_layer=-2, vision_feature_select_strategy="default",
    )  # fmt: skip
    size = dict(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30})
    if next_:
        model = LlavaNextForConditionalGeneration(LlavaNextConfig(image_grid_pinpoints=PINPOINTS, **common))
        image_processor = LlavaNextImageProcessor(image_grid_pinpoints=PINPOINTS, **size)
        processor = LlavaNextProcessor(
            image_processor=image_processor, tokenizer=tokenizer, patch_size=10,
            vision_feature_select_strategy="default", num_additional_image_tokens=1,
        )  # fmt: skip
    else:
        model = LlavaForConditionalGeneration(LlavaConfig(**common))
        processor = LlavaProcessor(
            image_processor=CLIPImageProcessor(**size), tokenizer=tokenizer, patch_size=10,
            vision_feature_select_strategy="default", num_additional_image_tokens=1,
        )  # fmt: skip
    return model.eval(), processor


def _inputs(processor, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
    return processor(images=image, text="USER: <image>\nWhat is shown? ASSISTANT:", return_tensors="pt")


def _generate(model, inputs):
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=6, do_sample=False)


def _image_features(model, inputs):
    kwargs = {"image_sizes": inputs["image_sizes"]} if "image_sizes" in inputs else {}
    with torch.no_grad():
        features = model.get_image_features(pixel_values=inputs["pixel_values"], **kwargs)
    features = getattr(features, "pooler_output", features)
    return torch.cat([f.reshape(-1, f.shape[-1]) for f in features]) if isinstance(features, list | tuple) else features


@pytest.fixture(scope="module")
def other_tower_file(tmp_path_factory):
    from transformers import CLIPVisionModel

    torch.manual_seed(99)
    other = CLIPVisionModel(tiny_vision_config(image_size=30))
    return export_encoder(other, tmp_path_factory.mktemp("tower") / "vision.safetensors")


@pytest.mark.parametrize("next_", [False, True], ids=["llava-1.5", "llava-1.6"])
def test_own_tower_swapped_back_gives_identical_token_ids(tmp_path, next_):
    model, processor = tiny_llava(next_)
    inputs = _inputs(processor)
    before = _generate(model, inputs)
    assert before.shape[1] > inputs["input_ids"].shape[1]
    own = export_encoder(model.model.vision_tower, tmp_path / "own.safetensors")
    assert make_safe(model, own) is model
    assert is_safe(model)
    assert torch.equal(_generate(model, inputs), before)


@pytest.mark.parametrize("next_", [False, True], ids=["llava-1.5", "llava-1.6"])
def test_another_tower_changes_image_features_and_leaves_the_rest(other_tower_file, next_):
    model, processor = tiny_llava(next_)
    inputs = _inputs(processor)
    config_before = model.config.to_dict()
    rest_before = {k: v.clone() for k, v in model.state_dict().items() if "vision_tower" not in k}
    features_before = _image_features(model, inputs)
    make_safe(model, other_tower_file)
    assert not torch.allclose(_image_features(model, inputs), features_before)
    assert all(torch.equal(v, rest_before[k]) for k, v in model.state_dict().items() if "vision_tower" not in k)
    after = model.config.to_dict()
    assert after["vision_feature_layer"] == -2 and after["vision_feature_select_strategy"] == "default"
    assert {k: v for k, v in after.items() if k != "vision_config"} == {
        k: v for k, v in config_before.items() if k != "vision_config"
    }
    assert list(swap_report(model)) == ["model.model.vision_tower"]
    assert _generate(model, inputs).shape[0] == 1  # still generates


def test_fp16_tower_with_bf16_language_model_only_the_tower_is_touched(other_tower_file):
    model, _ = tiny_llava()
    model.to(torch.bfloat16)
    model.model.vision_tower.to(torch.float16)
    make_safe(model, other_tower_file)
    assert {p.dtype for p in model.model.vision_tower.parameters()} == {torch.float16}
    assert {p.dtype for p in model.model.language_model.parameters()} == {torch.bfloat16}
    expected = load_vision_encoder(other_tower_file, torch_dtype=torch.float16, with_projection=False).state_dict()
    got = model.model.vision_tower.state_dict()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_quantized_tower_is_refused_before_anything_changes(other_tower_file):
    model, _ = tiny_llava()
    layer = model.model.vision_tower.encoder.layers[0].mlp
    layer.fc1.weight = nn.Parameter(torch.zeros_like(layer.fc1.weight, dtype=torch.int8), requires_grad=False)
    before = model.model.vision_tower.embeddings.patch_embedding.weight.clone()
    with pytest.raises(UnsupportedModelError, match=r"quantized weights .*llm_int8_skip_modules"):
        make_safe(model, other_tower_file)
    assert torch.equal(model.model.vision_tower.embeddings.patch_embedding.weight, before)


# The original llava package (llava-torch): its real classes in test_original_llava.py.


# ------------------------------------------------------------------------------------ errors


def test_siglip_tower_is_unsupported_with_the_reason():
    from transformers import LlavaConfig, LlavaForConditionalGeneration, SiglipVisionConfig

    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                                image_size=30, patch_size=10)  # fmt: skip
    model = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision.to_dict(), text_config=_text_config()))
    with pytest.raises(UnsupportedModelError, match=r"SiglipVisionModel \(model_type siglip_vision_model\) is not a "
                       r"CLIP vision tower.*SigLIP-based and other LLaVA variants are unsupported"):  # fmt: skip
        make_safe(model)


def test_a_224px_tower_with_the_336px_file(tmp_path):
    from transformers import CLIPVisionModel

    torch.manual_seed(1)
    file_336 = export_encoder(CLIPVisionModel(tiny_vision_config(image_size=40)), tmp_path / "v.safetensors")
    model, _ = tiny_llava()
    with pytest.raises(ArchitectureMismatchError, match=r"336|vision 32w x 2L.*40px/10.*30px/10.*image_size 40 != 30"):
        make_safe(model, file_336)


def test_auto_on_a_tower_no_checkpoint_fits_and_missing_file(tmp_path):
    model, _ = tiny_llava()
    with pytest.raises(
        ArchitectureMismatchError, match=r"model.model.vision_tower: No registered Safe-CLIP checkpoint"
    ):
        make_safe(model)
    with pytest.raises(CheckpointNotFoundError, match=r"not an existing file or folder"):
        make_safe(model, tmp_path / "nope.safetensors")


def test_deepcopy_of_a_swapped_model_keeps_the_record(other_tower_file):
    model, _ = tiny_llava()
    make_safe(model, other_tower_file)
    assert is_safe(copy.deepcopy(model))


def test_tower_from_a_clipmodel_folder_and_from_the_hub_cache(tmp_path, caplog):
    from tests.tiny_models import save_clip_repo, tiny_clip_model, write_hub_cache

    clip = tiny_clip_model(11)  # its vision tower is 30 px / patch 10, like the tiny LLaVA's
    folder = save_clip_repo(clip, tmp_path / "clip")
    expected = {k: v for k, v in clip.vision_model.state_dict().items()}

    local, _ = tiny_llava()
    make_safe(local, folder)
    got = local.model.vision_tower.state_dict()
    assert all(torch.equal(got[k], expected[k]) for k in expected)

    cache = tmp_path / "cache"
    files = {"config.json": folder / "config.json", "model.safetensors": folder / "model.safetensors"}
    commit = write_hub_cache(cache, "someorg/tiny-clip-336", files)
    hub, _ = tiny_llava()
    make_safe(hub, "someorg/tiny-clip-336", cache_dir=cache)
    assert swap_report(hub)["model.model.vision_tower"]["identity"] == f"hf:someorg/tiny-clip-336@{commit}"
    got = hub.model.vision_tower.state_dict()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    with caplog.at_level("INFO", logger="safe_encoders"):
        make_safe(hub, "someorg/tiny-clip-336", cache_dir=cache)  # idempotent
    assert "already holds" in caplog.text
