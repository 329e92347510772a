"""Builders of the trainer's tests on the synthetic world."""

from __future__ import annotations

from eval.synthetic import SyntheticWorld, build_image_processor
from train.data import EncodedQuadruplets, QuadrupletCollator


def encoded_worlds(tokenizer, train_size: int, val_size: int) -> tuple[EncodedQuadruplets, EncodedQuadruplets]:
    """Encoded training (seed 1) and validation (seed 2, distinct captions) sets of the synthetic world, 32 px."""
    collator = QuadrupletCollator(tokenizer, build_image_processor(32))
    return (
        EncodedQuadruplets(SyntheticWorld(train_size, seed=1), collator),
        EncodedQuadruplets(SyntheticWorld(val_size, seed=2, distinct=True), collator),
    )
