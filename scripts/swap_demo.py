"""Offline demo of the swap mechanics: convert a CLIPModel checkpoint, swap it into a Stable Diffusion pipeline.

All weights are random and tiny: this shows what `safe_encoders` does (conversion, checks,
bit-exact swap, provenance), not what Safe-CLIP does. `python -m train demo` shows the method.

    python scripts/swap_demo.py --out out/swap-demo
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import torch


def char_tokenizer(folder: Path):
    """A CLIP tokenizer over single characters (no merges), so the demo needs no vocabulary download."""
    from transformers import CLIPTokenizer

    # Byte-level BPE base alphabet: printable bytes stand for themselves, the rest map past U+0100.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]
    vocab = {token: i for i, token in enumerate(chars + [c + "</w>" for c in chars])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def tiny_pipeline(tokenizer, text_config):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(1)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, cross_attention_dim=text_config.hidden_size,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=2, norm_num_groups=4,
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
        latent_channels=4, norm_num_groups=4,
    )  # fmt: skip
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=CLIPTextModel(text_config).eval(), tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler(num_train_timesteps=100, steps_offset=1, clip_sample=False),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image(pipe, prompt: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return pipe(prompt, num_inference_steps=2, height=16, width=16, generator=generator, output_type="pt").images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="folder for the files (default: a temporary one)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    from safe_encoders import convert_checkpoint, export_encoder, is_safe, make_safe, swap_report

    out = args.out or Path(tempfile.mkdtemp(prefix="swap-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer").mkdir(exist_ok=True)
    tokenizer = char_tokenizer(out / "tokenizer")
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, projection_dim=16, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    vision_config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
        patch_size=8, projection_dim=16,
    )  # fmt: skip

    print("1. An 'official' CLIPModel checkpoint (random, tiny), laid out like aimagelab/safeclip_*:")
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(text_config=text_config.to_dict(), vision_config=vision_config.to_dict()))
    clip.save_pretrained(out / "clip-checkpoint")
    print(f"   {out / 'clip-checkpoint'}")

    print("2. convert_checkpoint splits it into one safetensors file per encoder (only each encoder's tensors read):")
    files = convert_checkpoint(out / "clip-checkpoint", out / "converted")
    for kind, path in files.items():
        print(f"   {kind:6s} {path}  ({path.stat().st_size / 1e6:.2f} MB)")

    pipe = tiny_pipeline(tokenizer, text_config)
    prompt = "a photo of a cat"
    original = image(pipe, prompt)

    print("3. Exactness: exporting the pipeline's own text encoder and swapping it back changes nothing:")
    own = export_encoder(pipe.text_encoder, out / "own_text_encoder.safetensors")
    make_safe(pipe, own)
    print(f"   images bitwise identical: {torch.equal(image(pipe, prompt), original)}")

    print("4. make_safe with the converted encoder (checks architecture, names, shapes and digests first):")
    make_safe(pipe, out / "converted")
    swapped = image(pipe, prompt)
    print(f"   images changed: {not torch.equal(swapped, original)}; is_safe(pipe) = {is_safe(pipe)}")
    print(f"   swap record: {json.dumps(swap_report(pipe), indent=None)[:300]}")
    print("\nWeights here are random: this demo shows the mechanics only. Real checkpoints: make_safe(pipe).")


if __name__ == "__main__":
    main()
