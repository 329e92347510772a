"""Builders of the trainer's tests on the synthetic world."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel

from eval.data.synthetic import SyntheticWorld, build_image_processor
from train.data import EncodedQuadruplets, QuadrupletCollator
from train.tiny_clip import tiny_clip_configs


def encoded_worlds(tokenizer, train_size: int, val_size: int) -> tuple[EncodedQuadruplets, EncodedQuadruplets]:
    """Encoded training (seed 1) and validation (seed 2, distinct captions) sets of the synthetic world, 32 px."""
    collator = QuadrupletCollator(tokenizer, build_image_processor(32))
    return (
        EncodedQuadruplets(SyntheticWorld(train_size, seed=1), collator),
        EncodedQuadruplets(SyntheticWorld(val_size, seed=2, distinct=True), collator),
    )


def save_tiny_base(tokenizer, folder: Path, width: int) -> Path:
    """A random one-layer CLIP ``width`` wide (seed 0), its tokenizer and a 32 px image processor saved in
    ``folder``: a ``base_model`` for ``python -m train``."""
    torch.manual_seed(0)
    text_cfg, vision_cfg = tiny_clip_configs(tokenizer, 32, width=width, layers=1, projection_dim=width)
    clip_cfg = CLIPConfig(text_config=text_cfg.to_dict(), vision_config=vision_cfg.to_dict(), projection_dim=width)
    CLIPModel(clip_cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    build_image_processor(32).save_pretrained(folder)
    return folder


def synthetic_run_overrides(base: Path, run: Path, *settings: str) -> list[str]:
    """``python -m train`` overrides of a quiet one-epoch run of ``base`` into ``run`` on the synthetic world
    (32 px, 16 training and 8 validation quadruplets, LoRA rank 2), then ``settings`` (``key=value``)."""
    return [
        f"base_model={base}",
        f"output_dir={run}",
        "data.source=synthetic",
        "data.image_size=32",
        "data.train_size=16",
        "data.val_size=8",
        "data.num_workers=0",
        "optim.epochs=1",
        "lora.rank=2",
        "progress=false",
        "tensorboard=false",
        *settings,
    ]
