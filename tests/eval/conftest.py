"""Fixtures for tests/eval (tiny models and real photos); plain helpers live in builders.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.eval.builders import build_tiny_sd, tiny_text_encoder


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models run fastest on one thread; with several, a busy 2-core CI box spends its time spinning."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A tiny random CLIPVisionModelWithProjection (width 16, 32 px) saved with its image processor."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=16,
    )
    folder = tmp_path_factory.mktemp("tiny_clip")
    CLIPVisionModelWithProjection(cfg).eval().save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


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
    """Another tiny text encoder of the same shape, exported with safe_encoders.export_encoder."""
    from safe_encoders import export_encoder

    folder = tmp_path_factory.mktemp("tiny_safe")
    return export_encoder(tiny_text_encoder(seed=123), folder / "tiny_safe_text.safetensors", base_model="tiny")


@pytest.fixture(scope="session")
def tiny_q16_prompts(tmp_path_factory, tiny_clip_dir) -> Path:
    """A Q16 prompt file (pickled float16 (2, 16) array) matching the tiny CLIP's width."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("tiny_q16") / "prompts.p"
    path.write_bytes(pickle.dumps(rng.standard_normal((2, 16)).astype(np.float16), protocol=2))
    return path
