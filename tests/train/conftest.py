"""Fixtures for tests/train; plain builders live in synthetic_builders.py and visu_builders.py."""

import pytest


@pytest.fixture(scope="module")
def tokenizer():
    """The synthetic world's word-level tokenizer, 32 positions."""
    from eval.data.synthetic import build_tokenizer

    return build_tokenizer(max_length=32)


@pytest.fixture(scope="session")
def demo_world(tmp_path_factory):
    """The demo's steps 1-2 at full size (seed 0): the synthetic world and the pre-trained tiny CLIP, built once for
    the session (the Safe-CLIP and HySAC figure tests start from it; each deep-copies the towers it fine-tunes).
    Built on one torch thread, as the demo does."""
    import torch

    from train.demo_world import DemoSettings, prepare_world

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return prepare_world(DemoSettings(seed=0), tmp_path_factory.mktemp("demo_world"))
    finally:
        torch.set_num_threads(before)
