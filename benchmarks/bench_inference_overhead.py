"""Generation latency: plain SD vs the same pipeline after `make_safe` vs SLD (MEDIUM), side by side.

A CPU-sized SD 1.x-shaped pipeline (the real ViT-L/14 text encoder architecture, a small UNet and
VAE, random weights) generates 64x64 images with 10 steps. The three conditions run interleaved,
`--repeats` times each, from the same seed; the medians are compared. make_safe only changes
weights, so its ratio should be 1.00x; SLD runs the UNet on three latent copies per step.

    python benchmarks/bench_inference_overhead.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_components(seed: int = 0) -> dict:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from tests.tiny_models import clip_tokenizer

    torch.manual_seed(seed)
    text_config = CLIPTextConfig(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        hidden_act="quick_gelu", vocab_size=49408, max_position_embeddings=77, projection_dim=768,
    )  # fmt: skip
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, cross_attention_dim=768,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=8, norm_num_groups=8,
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
    )  # fmt: skip
    return dict(
        vae=vae, text_encoder=CLIPTextModel(text_config).eval(), tokenizer=clip_tokenizer(), unet=unet,
        scheduler=DDIMScheduler(num_train_timesteps=1000, steps_offset=1, clip_sample=False),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    from diffusers import StableDiffusionPipeline, StableDiffusionPipelineSafe

    from safe_encoders import export_encoder, make_safe
    from safe_encoders.swap import installed_record

    torch.set_num_threads(2)
    plain = StableDiffusionPipeline(**build_components(0))
    safe = StableDiffusionPipeline(**build_components(0))
    sld = StableDiffusionPipelineSafe(**build_components(0))
    with tempfile.TemporaryDirectory() as tmp:
        other = StableDiffusionPipeline(**build_components(1)).text_encoder  # stands in for Safe-CLIP weights
        make_safe(safe, export_encoder(other, Path(tmp) / "text.safetensors"))
    assert installed_record(safe.text_encoder) is not None
    for pipe in (plain, safe, sld):
        pipe.set_progress_bar_config(disable=True)

    def run(pipe, extra):
        generator = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        pipe("a photo of a cat", num_inference_steps=args.steps, height=64, width=64, generator=generator, **extra)
        return time.perf_counter() - start

    conditions = {
        "sd": (plain, {}),
        "sd + make_safe": (safe, {}),
        # MEDIUM preset; its 10 warm-up steps (of SD's usual 50) are scaled to this run's step count.
        "sld-medium": (sld, {"sld_guidance_scale": 1000, "sld_warmup_steps": round(10 * args.steps / 50),
                             "sld_threshold": 0.01, "sld_momentum_scale": 0.3, "sld_mom_beta": 0.4}),
    }  # fmt: skip
    for pipe, extra in conditions.values():
        run(pipe, extra)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in conditions}
    for _ in range(args.repeats):
        for name, (pipe, extra) in conditions.items():
            times[name].append(run(pipe, extra))
    base = statistics.median(times["sd"])
    print(f"{'condition':16s} {'median s':>9s} {'ratio':>6s}   ({args.repeats} runs each, {args.steps} steps, 64x64)")
    for name, values in times.items():
        print(f"{name:16s} {statistics.median(values):9.3f} {statistics.median(values) / base:6.2f}x")


if __name__ == "__main__":
    main()
