import pytest

from safe_encoders import ArchitectureMismatchError, CheckpointNotFoundError, find_checkpoint, get_checkpoint
from safe_encoders.registry import CHECKPOINTS, EncoderFingerprint, list_checkpoints
from tests.tiny_models import hub_config, tiny_text_config


@pytest.mark.parametrize(
    ("repo", "subfolder", "expected"),
    [
        ("CompVis/stable-diffusion-v1-4", "text_encoder", "aimagelab/safeclip_vit-l_14"),
        ("runwayml/stable-diffusion-v1-5", "text_encoder", "aimagelab/safeclip_vit-l_14"),
        ("stabilityai/stable-diffusion-2-1", "text_encoder", "aimagelab/safeclip_sd_20"),
        ("stabilityai/stable-diffusion-2-1-base", "text_encoder", "aimagelab/safeclip_sd_20"),
        ("stabilityai/stable-diffusion-xl-base-1.0", "text_encoder", "aimagelab/safeclip_vit-l_14"),
    ],
)
def test_auto_picks_the_published_checkpoint_for_real_text_encoder_configs(repo, subfolder, expected):
    assert find_checkpoint(hub_config(repo, subfolder)).repo_id == expected


def test_auto_picks_336px_vision_checkpoint_for_llava_and_224px_for_clip():
    llava_tower = hub_config("llava-hf/llava-1.5-7b-hf")["vision_config"]
    assert find_checkpoint(llava_tower).repo_id == "aimagelab/safeclip_vit-l_14_336"
    clip_224 = hub_config("openai/clip-vit-large-patch14")["vision_config"]
    assert find_checkpoint(clip_224).repo_id == "aimagelab/safeclip_vit-l_14"


def test_registry_fingerprints_match_the_real_base_model_configs():
    """The hand-written fingerprints agree with the real configs of the base models."""
    openai = hub_config("openai/clip-vit-large-patch14")
    openai_336 = hub_config("openai/clip-vit-large-patch14-336")
    vit_h = hub_config("aimagelab/safeclip_vit-h_14")
    from transformers import CLIPConfig

    for entry, raw in [
        (CHECKPOINTS["safeclip-vit-l-14"], openai),
        (CHECKPOINTS["safeclip-vit-l-14-336"], openai_336),
        (CHECKPOINTS["safeclip-vit-h-14"], vit_h),
    ]:
        full = CLIPConfig.from_dict(raw)
        text = EncoderFingerprint.from_config(full.text_config, projection_dim=full.projection_dim)
        vision = EncoderFingerprint.from_config(full.vision_config, projection_dim=full.projection_dim)
        assert entry.encoders["text"] == text
        assert entry.encoders["vision"] == vision


def test_sdxl_bigg_text_encoder_has_no_checkpoint_and_the_error_lists_what_exists():
    bigg = hub_config("stabilityai/stable-diffusion-xl-base-1.0", "text_encoder_2")
    with pytest.raises(ArchitectureMismatchError, match=r"No registered Safe-CLIP checkpoint fits a text 1280w x 32L"):
        find_checkpoint(bigg, has_projection=True)
    with pytest.raises(ArchitectureMismatchError, match=r"safeclip-vit-l-14 \(text 768w x 12L"):
        find_checkpoint(bigg, has_projection=True)


def test_fingerprint_allows_a_deeper_source_but_not_a_shallower_one():
    deep = EncoderFingerprint.from_config(tiny_text_config(layers=4))
    shallow = EncoderFingerprint.from_config(tiny_text_config(layers=3))
    assert deep.mismatches(shallow, target_has_projection=False) == []
    assert shallow.mismatches(deep, target_has_projection=False) == ["num_layers 3 < 4"]


def test_fingerprint_compares_projection_only_when_the_target_has_one():
    a = EncoderFingerprint.from_config(tiny_text_config(projection=16))
    b = EncoderFingerprint.from_config(tiny_text_config(projection=8))
    assert a.mismatches(b, target_has_projection=False) == []
    assert a.mismatches(b, target_has_projection=True) == ["projection_dim 16 != 8"]


def test_sd2_auto_takes_the_sd_20_release_and_vit_h_stays_selectable_by_name(tmp_path):
    """make_safe on the real SD 2.1 text encoder (built on the meta device: no weights): 'auto' asks the
    (empty, offline) cache for safeclip_sd_20; the ViT-H release is used when named."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from safe_encoders import make_safe

    with torch.device("meta"):
        sd21 = CLIPTextModel(CLIPTextConfig.from_dict(hub_config("stabilityai/stable-diffusion-2-1", "text_encoder")))
    with pytest.raises(CheckpointNotFoundError, match=r"aimagelab/safeclip_sd_20@main: config\.json"):
        make_safe(sd21, cache_dir=tmp_path)
    for name in ("safeclip-vit-h-14", "aimagelab/safeclip_vit-h_14"):
        with pytest.raises(CheckpointNotFoundError, match=r"aimagelab/safeclip_vit-h_14@main: config\.json"):
            make_safe(sd21, checkpoint=name, cache_dir=tmp_path)
    # the full 24-layer ViT-H text tower is not SD 2's: auto gives it the ViT-H release
    vit_h_text = hub_config("aimagelab/safeclip_vit-h_14")["text_config"]
    assert find_checkpoint(vit_h_text).name == "safeclip-vit-h-14"


def test_only_hysac_is_not_an_auto_candidate():
    assert [e.name for e in list_checkpoints() if not e.auto] == ["hysac"]
    assert all(e.license == "cc-by-nc-4.0" and e.revision == "main" for e in list_checkpoints())


def test_get_checkpoint_by_name_or_hub_id_and_did_you_mean():
    assert get_checkpoint("safeclip-vit-h-14").repo_id == "aimagelab/safeclip_vit-h_14"
    assert get_checkpoint("aimagelab/HySAC").name == "hysac"
    assert get_checkpoint("hf-hub:aimagelab/safeclip_vit-l_14_336").name == "safeclip-vit-l-14-336"
    with pytest.raises(CheckpointNotFoundError, match=r"Did you mean 'safeclip-vit-l-14'\?"):
        get_checkpoint("safeclip-vit-l14")
