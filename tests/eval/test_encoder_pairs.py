"""Encoder pairs: ``NAME=SOURCE`` specs and the per-backbone pairs of original CLIP and Safe-CLIP."""

import pytest

from eval.errors import RetrievalError
from eval.retrieval.encoder_pairs import BACKBONES, EncoderPair, backbone_pairs


def test_model_specs():
    assert EncoderPair.parse("clip=openai/clip-vit-large-patch14") == EncoderPair(
        "clip", "openai/clip-vit-large-patch14", "openai/clip-vit-large-patch14"
    )
    pair = EncoderPair.parse("mix=a/text.safetensors::b", processor="p")
    assert (pair.text, pair.vision, pair.processor) == ("a/text.safetensors", "b", "p")
    with pytest.raises(RetrievalError, match="expected NAME=SOURCE"):
        EncoderPair.parse("no-source")


def test_backbone_pairs_name_each_backbone_and_its_original_clip():
    pairs = backbone_pairs()
    assert [p.name for p in pairs] == [f"{m} {b}" for b in BACKBONES for m in ("CLIP", "Safe-CLIP")]
    by_name = {p.name: p for p in pairs}
    # the original CLIP of a row is its checkpoint's base model, so 336 px compares with 336 px
    assert by_name["CLIP ViT-L/14@336"].vision == "openai/clip-vit-large-patch14-336"
    assert by_name["Safe-CLIP ViT-L/14@336"].vision == "safeclip-vit-l-14-336"
    assert by_name["CLIP ViT-H/14"].text == "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
    assert [p.name for p in backbone_pairs(["vit-h-14", "ViT-L/14@336", "vit-h-14"])] == [
        "CLIP ViT-H/14",
        "Safe-CLIP ViT-H/14",
        "CLIP ViT-L/14@336",
        "Safe-CLIP ViT-L/14@336",
    ]
    with pytest.raises(RetrievalError, match=r"unknown backbone 'ViT-B/32'; choose among"):
        backbone_pairs(["ViT-B/32"])
