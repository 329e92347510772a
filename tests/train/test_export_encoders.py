import json

import pytest
import torch

from eval.data.synthetic import SyntheticWorld, build_image_processor, build_tokenizer
from train.config import load_config
from train.data import EncodedQuadruplets, QuadrupletCollator, stack_encoded
from train.export import export_safe_clip
from train.model import SafeClipModel
from train.tiny_clip import tiny_clip

safe_encoders = pytest.importorskip("safe_encoders")


def test_exported_collapsed_encoders_match_the_lora_model(tmp_path):
    tokenizer = build_tokenizer(32)
    collator = QuadrupletCollator(tokenizer, build_image_processor(32))
    batch = stack_encoded([EncodedQuadruplets(SyntheticWorld(12, seed=5), collator)[i] for i in range(12)])
    cfg = load_config(None, ["lora.rank=4", "lora.alpha=2"])
    torch.manual_seed(0)
    text, vision = tiny_clip(tokenizer, 32, width=32, layers=2, projection_dim=24)
    model = SafeClipModel(text, vision, cfg.lora)
    with torch.no_grad():  # trained-looking adapters: non-zero B factors everywhere, patch embedding included
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.1)
    assert any("patch_embedding" in n and "lora_A" in n for n, _ in model.named_parameters())
    model.eval()
    with torch.no_grad():
        want = model(batch)
        with model.original():
            original = model(batch)
    assert (want["text_unsafe"] - original["text_unsafe"]).abs().max() > 1e-3  # the adapters matter

    paths = export_safe_clip(
        model,
        tmp_path / "export",
        base_model="tiny-clip/synthetic",
        config=cfg,
        data_description="synthetic world, 12 quadruplets",
    )
    assert set(paths) == {"text", "vision"} and all(p.exists() for p in paths.values())
    text2 = safe_encoders.load_text_encoder(paths["text"], with_projection=True).eval()
    vision2 = safe_encoders.load_vision_encoder(paths["vision"], with_projection=True).eval()
    assert not any("lora" in k for k in text2.state_dict())
    with torch.no_grad():
        got_ts = text2(input_ids=batch["safe_input_ids"], attention_mask=batch["safe_attention_mask"]).text_embeds
        got_tu = text2(input_ids=batch["unsafe_input_ids"], attention_mask=batch["unsafe_attention_mask"]).text_embeds
        got_v = vision2(pixel_values=batch["safe_pixel_values"]).image_embeds
        got_g = vision2(pixel_values=batch["unsafe_pixel_values"]).image_embeds
    for got, key in ((got_ts, "text_safe"), (got_tu, "text_unsafe"), (got_v, "image_safe"), (got_g, "image_unsafe")):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want[key], rtol=0, atol=1e-5)

    from safetensors import safe_open

    with safe_open(str(paths["text"]), "pt") as f:
        meta = f.metadata()
    blob = json.dumps(meta)
    assert "tiny-clip/synthetic" in blob and cfg.digest() in blob and "synthetic world" in blob


def test_model_card_is_generated_from_the_exported_headers(tmp_path):
    from safe_encoders import export_encoder
    from tests.tiny_models import tiny_clip_model
    from train.export import model_card

    clip = tiny_clip_model(0)
    from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    text = CLIPTextModelWithProjection(clip.config.text_config)
    vision = CLIPVisionModelWithProjection(clip.config.vision_config)
    meta = {"provenance": "trained", "lora_rank": 16, "lora_alpha": 1, "data": "synthetic world seed 3"}
    export_encoder(text, tmp_path, base_model="openai/clip-vit-large-patch14", metadata=meta)
    export_encoder(vision, tmp_path, base_model="openai/clip-vit-large-patch14", metadata=meta)
    card = model_card(tmp_path)
    assert card.startswith("---\nlibrary_name: transformers\nlicense: cc-by-nc-4.0\nbase_model: openai/clip-vit-large")
    assert "LoRA (rank 16, alpha 1)" in card
    assert "Data: synthetic world seed 3." in card
    from safe_encoders.format import read_encoder_header

    assert read_encoder_header(tmp_path / "vision_encoder.safetensors").digest in card


def test_an_export_failing_on_the_vision_encoder_leaves_no_partial_folder(tmp_path):
    from safe_encoders.atomic import FolderWriteError
    from tests.faults import file_size_limit, umask

    tokenizer = build_tokenizer(32)
    cfg = load_config(None, ["lora.rank=4", "lora.alpha=2"])

    def model():
        torch.manual_seed(0)
        text, vision = tiny_clip(tokenizer, 64, width=32, layers=1, projection_dim=24, patch_size=32)
        return SafeClipModel(text, vision, cfg.lora)

    with umask(0o022):
        full = export_safe_clip(model(), tmp_path / "full", base_model="tiny")
    assert {p.stat().st_mode & 0o777 for p in full.values()} == {0o644}
    text_size, vision_size = full["text"].stat().st_size, full["vision"].stat().st_size
    assert text_size < vision_size  # the text encoder is written first and fits, the vision one does not
    with (
        pytest.raises(FolderWriteError, match=r"could not write .*out.*nothing was written"),
        file_size_limit((text_size + vision_size) // 2),
    ):
        export_safe_clip(model(), tmp_path / "out", base_model="tiny")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]
