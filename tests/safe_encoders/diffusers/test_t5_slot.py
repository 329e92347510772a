"""A pipeline whose T5 slot has no Safe-CLIP (Flux; SD 3 is laid out the same way) is refused without allow_partial:
the slot has no kind, and leaving it unswapped would leave an encoder that still knows the unsafe concepts."""

from __future__ import annotations

import pytest
import torch

from safe_encoders import PartialSwapError, export_encoder, is_safe, make_safe, swap_report
from tests.tiny_models import _tiny_vae, clip_tokenizer, tiny_text_encoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_flux_pipeline():
    """A tiny random FluxPipeline: a CLIP text_encoder and a T5 text_encoder_2, as the real one."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    t5 = T5EncoderModel(T5Config(vocab_size=100, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2))
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=32, axes_dims_rope=(2, 2, 4),
    )  # fmt: skip
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_tiny_vae(),
        text_encoder=tiny_text_encoder(0),
        tokenizer=clip_tokenizer(),
        text_encoder_2=t5,
        tokenizer_2=None,
        transformer=transformer,
    )


@pytest.fixture(scope="module")
def safe_file(tmp_path_factory):
    return export_encoder(tiny_text_encoder(seed=123), tmp_path_factory.mktemp("safe") / "text.safetensors")


def test_the_t5_slot_is_refused_without_allow_partial_and_nothing_changes(safe_file):
    pipe = tiny_flux_pipeline()
    before = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    with pytest.raises(PartialSwapError, match=r"pipe.text_encoder_2 \(T5EncoderModel is not a CLIP text encoder"):
        make_safe(pipe, safe_file)
    assert all(torch.equal(before[k], v) for k, v in pipe.text_encoder.state_dict().items())
    assert not is_safe(pipe)


def test_with_allow_partial_the_clip_slot_is_swapped_and_the_pipeline_is_still_not_safe(safe_file):
    pipe = tiny_flux_pipeline()
    with pytest.warns(UserWarning, match="partial swap"):
        make_safe(pipe, safe_file, allow_partial=True)
    report = swap_report(pipe)
    assert report["pipe.text_encoder"]["checkpoint"] == str(safe_file) and report["pipe.text_encoder_2"] is None
    assert not is_safe(pipe)
