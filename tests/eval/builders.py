"""Builders shared by the tests of eval/: paths to the real data files, tiny models, subprocess settings."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[3] / "shared" / "fixtures"
DATA = SHARED / "data"
HUB = SHARED / "hub"


def subprocess_env() -> dict[str, str]:
    """Environment for the CLI runs started by tests: offline, one thread per process."""
    import os

    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def shared_file(*parts: str) -> Path:
    """A file of ../shared/fixtures, or skip the test when the shared fixtures are absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real fixture {path} is absent (the ../shared/fixtures checkout is not available)")
    return path


def build_tiny_sd(folder: Path, seed: int = 0) -> Path:
    """A tiny random SD v1-style pipeline (real CLIP tokenizer, vocab 49408, 77 positions) saved to ``folder``."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTokenizer

    sd14 = HUB / "CompVis__stable-diffusion-v1-4"
    if not sd14.is_dir():
        pytest.skip(f"real SD v1.4 tokenizer/scheduler configs absent ({sd14})")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=tiny_text_encoder(seed),
        tokenizer=CLIPTokenizer.from_pretrained(sd14 / "tokenizer", model_max_length=77),
        unet=unet,
        scheduler=PNDMScheduler.from_pretrained(sd14 / "scheduler"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def tiny_text_encoder(seed: int):
    """A tiny random CLIPTextModel with SD's vocabulary (49408) and 77 positions."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=49408,
        max_position_embeddings=77,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=32,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModel(cfg).eval()
