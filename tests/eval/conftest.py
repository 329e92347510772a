"""Fixtures for tests/eval (tiny models and real photos); plain helpers live in builders.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.eval.builders import build_tiny_sd, save_q16_clip, write_q16_prompts
from tests.tiny_models import tiny_text_encoder


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A tiny random CLIPVisionModelWithProjection (projection 16, 32 px) saved with its image processor."""
    return save_q16_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def photos():
    """Real photos shipped with scikit-image, as PIL images: astronaut, chelsea (a cat), coffee."""
    from PIL import Image
    from skimage import data

    return [Image.fromarray(data.astronaut()), Image.fromarray(data.chelsea()), Image.fromarray(data.coffee())]


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture(scope="session")
def tiny_safe_file(tmp_path_factory) -> Path:
    """Another tiny text encoder of the tiny SD's shape, exported with safe_encoders.export_encoder."""
    from safe_encoders import export_encoder

    folder = tmp_path_factory.mktemp("tiny_safe")
    return export_encoder(tiny_text_encoder(seed=123), folder / "tiny_safe_text.safetensors", base_model="tiny")


@pytest.fixture(scope="session")
def tiny_q16_prompts(tmp_path_factory, tiny_clip_dir) -> Path:
    """A Q16 prompt file (pickled float16 (2, 16) array) matching the tiny CLIP's width."""
    return write_q16_prompts(tmp_path_factory.mktemp("tiny_q16") / "prompts.p")


@pytest.fixture(scope="session")
def tiny_clip_score_dir(tmp_path_factory):
    """A tiny random CLIPModel (30 px images) with its processor, saved as a local folder."""
    from transformers import CLIPImageProcessor, CLIPProcessor

    from tests.tiny_models import clip_tokenizer, tiny_clip_model

    folder = tmp_path_factory.mktemp("tiny_clip_score")
    # seed 6: cosines of both signs on the conftest photos (test_quality_metrics relies on it)
    tiny_clip_model(seed=6).save_pretrained(folder)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}),
        tokenizer=clip_tokenizer(),
    )
    processor.save_pretrained(folder)
    return folder
