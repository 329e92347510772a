"""A tiny CLIP (both towers with projections) sized for the synthetic world: trains on a laptop CPU."""

from __future__ import annotations

from typing import Any

from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPVisionConfig, CLIPVisionModelWithProjection


def tiny_clip_configs(
    tokenizer: Any,
    image_size: int = 32,
    width: int = 64,
    layers: int = 2,
    heads: int = 2,
    projection_dim: int = 64,
    patch_size: int = 8,
) -> tuple[CLIPTextConfig, CLIPVisionConfig]:
    """Configs of a small CLIP whose text side matches ``tokenizer`` (vocabulary, length, special ids)."""
    text = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=projection_dim,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=projection_dim,
    )
    return text, vision


def tiny_clip(
    tokenizer: Any, image_size: int = 32, **sizes: Any
) -> tuple[CLIPTextModelWithProjection, CLIPVisionModelWithProjection]:
    """Randomly initialised towers from :func:`tiny_clip_configs` (seed torch first for determinism)."""
    text_cfg, vision_cfg = tiny_clip_configs(tokenizer, image_size, **sizes)
    return CLIPTextModelWithProjection(text_cfg), CLIPVisionModelWithProjection(vision_cfg)
