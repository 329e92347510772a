"""Fixtures for tests/train; plain builders live in synthetic_builders.py and visu_builders.py."""

import pytest


@pytest.fixture(scope="module")
def tokenizer():
    """The synthetic world's word-level tokenizer, 32 positions."""
    from eval.data.synthetic import build_tokenizer

    return build_tokenizer(max_length=32)
