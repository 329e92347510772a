import logging
import os

import pytest
import torch

from safe_encoders import (
    ArchitectureMismatchError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    PartialSwapError,
    UnsupportedModelError,
    export_encoder,
    is_safe,
    load_text_encoder,
    make_safe,
    swap_report,
)
from tests.tiny_models import (
    generate,
    save_clip_repo,
    tiny_clip_model,
    tiny_sd_pipeline,
    tiny_text_encoder,
)


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def other_text_file(tmp_path_factory):
    """A v1-shaped text encoder with other weights, in our format."""
    return export_encoder(tiny_text_encoder(seed=123), tmp_path_factory.mktemp("other") / "text.safetensors")


@pytest.mark.parametrize("sld", [False, True], ids=["sd", "sld"])
def test_own_encoder_swapped_back_gives_bitwise_identical_images(tmp_path, sld):
    pipe = tiny_sd_pipeline("v1", sld=sld)
    kwargs = {"sld_guidance_scale": 1000, "sld_warmup_steps": 0} if sld else {}
    before = generate(pipe, **kwargs)
    own = export_encoder(pipe.text_encoder, tmp_path / "own.safetensors")
    assert make_safe(pipe, own) is pipe
    assert is_safe(pipe)
    assert torch.equal(generate(pipe, **kwargs), before)


def test_another_encoder_changes_the_images_and_is_reported(other_text_file):
    pipe = tiny_sd_pipeline("v1")
    before = generate(pipe)
    assert not is_safe(pipe)
    make_safe(pipe, other_text_file)
    assert not torch.equal(generate(pipe), before)
    report = swap_report(pipe)
    assert report["pipe.text_encoder"]["checkpoint"] == str(other_text_file)
    assert report["pipe.text_encoder"]["layers"] == "3/3"
    expected = load_text_encoder(other_text_file, with_projection=False).state_dict()
    assert _same_state(pipe.text_encoder.state_dict(), expected)


def test_img2img_and_inpaint_pipelines_share_the_swap(other_text_file):
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline

    base = tiny_sd_pipeline("v1")
    for cls in (StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline):
        pipe = cls(**base.components)
        make_safe(pipe, other_text_file)
        assert is_safe(pipe)


def test_sd2_uses_the_first_layers_of_a_deeper_tower_exactly_like_penultimate_conditioning(tmp_path):
    """SD 2 keeps 23 of OpenCLIP ViT-H's 24 layers: the swapped encoder must equal layer -2 + final norm."""
    full = tiny_clip_model(7, text_layers=3, act="gelu")
    norm = full.text_model.final_layer_norm
    with torch.no_grad():  # not the default (1, 0): a swap that skipped the final norm would show
        norm.weight.copy_(torch.linspace(0.5, 1.5, norm.weight.numel()))
        norm.bias.copy_(torch.linspace(-0.3, 0.3, norm.bias.numel()))
    repo = save_clip_repo(full, tmp_path / "vit-h-like")
    pipe = tiny_sd_pipeline("v2")  # 2-layer gelu text encoder
    pipe_norm = pipe.text_encoder.state_dict()
    assert not torch.equal(
        next(v for k, v in pipe_norm.items() if k.endswith("final_layer_norm.weight")), norm.weight.detach()
    )
    make_safe(pipe, repo)
    assert swap_report(pipe)["pipe.text_encoder"]["layers"] == "2/3"
    ids = pipe.tokenizer(["a photo of a cat"], padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        outputs = full.text_model(input_ids=ids, output_hidden_states=True)
        penultimate = full.text_model.final_layer_norm(outputs.hidden_states[-2])
        torch.testing.assert_close(pipe.text_encoder(ids).last_hidden_state, penultimate, rtol=0, atol=1e-6)


def test_sdxl_needs_an_explicit_opt_in_and_then_swaps_only_the_vit_l_encoder(tmp_path, other_text_file):
    pipe = tiny_sd_pipeline("xl")
    state_1, state_2 = _snapshot(pipe.text_encoder), _snapshot(pipe.text_encoder_2)
    with pytest.raises(PartialSwapError, match=r"no Safe-CLIP replacement for pipe.text_encoder_2.*allow_partial=True"):
        make_safe(pipe, other_text_file)
    assert _same_state(_snapshot(pipe.text_encoder), state_1)  # nothing changed
    with pytest.warns(UserWarning, match=r"partial swap, pipe.text_encoder_2"):
        make_safe(pipe, other_text_file, allow_partial=True)
    assert not _same_state(_snapshot(pipe.text_encoder), state_1)
    assert _same_state(_snapshot(pipe.text_encoder_2), state_2)
    assert swap_report(pipe)["pipe.text_encoder_2"] is None
    assert not is_safe(pipe)  # the bigG encoder still knows unsafe concepts
    assert generate(pipe).shape == (1, 3, 16, 16)


def test_second_call_is_a_no_op_and_reads_nothing(tmp_path, caplog):
    pipe = tiny_sd_pipeline("v1")
    path = export_encoder(tiny_text_encoder(seed=5), tmp_path / "t.safetensors")
    make_safe(pipe, path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # reading the tensors again would now fail the digest check
    # Replaced, not written in place: the swapped weights are a private map of the file checked, and an
    # in-place write would show through it, as in any model from_pretrained loads (test_mapped_weights.py).
    (tmp_path / "new").write_bytes(bytes(data))
    os.replace(tmp_path / "new", path)
    with caplog.at_level(logging.INFO, logger="safe_encoders"):
        make_safe(pipe, path)
    assert "already holds" in caplog.text


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_pipeline_dtype_is_kept(other_text_file, dtype):
    pipe = tiny_sd_pipeline("v1").to(dtype=dtype)
    make_safe(pipe, other_text_file)
    assert {p.dtype for p in pipe.text_encoder.parameters()} == {dtype}
    expected = load_text_encoder(other_text_file, torch_dtype=dtype, with_projection=False).state_dict()
    assert _same_state(pipe.text_encoder.state_dict(), expected)


def test_torch_dtype_casts_the_swapped_encoder(other_text_file):
    pipe = tiny_sd_pipeline("v1")
    make_safe(pipe, other_text_file, torch_dtype=torch.bfloat16)
    assert {p.dtype for p in pipe.text_encoder.parameters()} == {torch.bfloat16}


def test_accelerate_offload_hooks_are_kept_and_the_offloaded_weights_updated(other_text_file):
    from accelerate import cpu_offload

    pipe = tiny_sd_pipeline("v1")
    cpu_offload(pipe.text_encoder, execution_device=torch.device("cpu"))
    assert all(p.device.type == "meta" for p in pipe.text_encoder.parameters())
    make_safe(pipe, other_text_file)
    assert hasattr(pipe.text_encoder.embeddings.token_embedding, "_hf_hook")  # hooks still in place
    reference = load_text_encoder(other_text_file, with_projection=False)
    ids = pipe.tokenizer(["a cat"], padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(pipe.text_encoder(ids).last_hidden_state, reference(ids).last_hidden_state)


def test_model_cpu_offload_hooks_survive(other_text_file):
    pipe = tiny_sd_pipeline("v1")
    pipe.enable_model_cpu_offload(device="cpu")
    hook = pipe.text_encoder._hf_hook
    make_safe(pipe, other_text_file)
    assert pipe.text_encoder._hf_hook is hook
    assert generate(pipe).shape == (1, 3, 16, 16)


def test_save_pretrained_keeps_the_record(tmp_path, other_text_file):
    from diffusers import StableDiffusionPipeline

    pipe = make_safe(tiny_sd_pipeline("v1"), other_text_file)
    pipe.save_pretrained(tmp_path / "saved")
    reloaded = StableDiffusionPipeline.from_pretrained(tmp_path / "saved")
    assert is_safe(reloaded)
    assert _same_state(reloaded.text_encoder.state_dict(), pipe.text_encoder.state_dict())


# ------------------------------------------------------------------------------------ errors


def test_objects_that_are_not_supported_pipelines():
    pipe = tiny_sd_pipeline("v1")
    with pytest.raises(
        UnsupportedModelError, match=r"does not know how to make a .*UNet2DConditionModel safe. Supported: diffusers"
    ):
        make_safe(pipe.unet)
    with pytest.raises(UnsupportedModelError, match=r"builtins.str"):
        make_safe("CompVis/stable-diffusion-v1-4")
    assert not is_safe(pipe.unet)


def test_pipeline_without_a_clip_text_encoder():
    from transformers import T5Config, T5EncoderModel

    pipe = tiny_sd_pipeline("v1")
    t5 = T5EncoderModel(T5Config(vocab_size=100, d_model=32, d_ff=37, num_layers=1, num_heads=2, d_kv=8))
    pipe.register_modules(text_encoder=t5)
    with pytest.raises(UnsupportedModelError, match=r"has no CLIP encoder .*pipe.text_encoder: T5EncoderModel is not a "
                       r"CLIP text encoder"):  # fmt: skip
        make_safe(pipe, "auto")


def test_architecture_mismatch_names_both_architectures(other_text_file):
    pipe = tiny_sd_pipeline("v2")
    with pytest.raises(
        ArchitectureMismatchError,
        match=r"provides a text 32w x 3L, 4 heads, quick_gelu encoder, but pipe.text_encoder is a "
        r"text 32w x 2L, 4 heads, gelu encoder \(hidden_act quick_gelu != gelu\)",
    ):
        make_safe(pipe, other_text_file)
    with pytest.raises(ArchitectureMismatchError, match=r"pipe.text_encoder: No registered Safe-CLIP checkpoint fits"):
        make_safe(pipe)  # auto: the tiny architecture is not a published one


def test_missing_corrupt_and_unreachable_checkpoints(tmp_path, other_text_file):
    pipe = tiny_sd_pipeline("v1")
    before = _snapshot(pipe.text_encoder)
    with pytest.raises(CheckpointNotFoundError, match=r"not an existing file or folder"):
        make_safe(pipe, tmp_path / "missing.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    data = bytearray(other_text_file.read_bytes())
    data[-5] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match=r"does not match the digest"):
        make_safe(pipe, corrupt)
    with pytest.raises(CheckpointNotFoundError, match=r"not in the local Hugging Face cache"):
        make_safe(pipe, "someorg/not-cached", cache_dir=tmp_path / "empty-cache")
    assert _same_state(_snapshot(pipe.text_encoder), before)  # all or nothing
    assert not is_safe(pipe)
