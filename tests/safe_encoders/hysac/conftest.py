"""Shared by the gate tests: a tiny random HySAC whose thresholds are set from its own scores, so that
the outcome of a check is controlled, and a Safe-CLIP text encoder file for redirection."""

from dataclasses import dataclass

import pytest

from safe_encoders import export_encoder
from tests.safe_encoders.hysac.tiny_hysac import tiny_hysac
from tests.tiny_models import clip_tokenizer, tiny_text_encoder

PROMPTS = ("a photo of a cat", "a photo of a dog")


@pytest.fixture(scope="module")
def classifier():
    from transformers import CLIPImageProcessor

    model = tiny_hysac(seed=3)
    model.tokenizer = clip_tokenizer()
    model.image_processor = CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30})
    return model


@dataclass(frozen=True)
class Prompts:
    safe: str
    unsafe: str
    threshold: float


@pytest.fixture(scope="module")
def prompts(classifier):
    """The prompt farther from the root is the unsafe one; the threshold lies halfway between the two."""
    scores = classifier.unsafe_score(texts=list(PROMPTS), text_threshold=0.0).text.scores
    safe, unsafe = PROMPTS if scores[0] < scores[1] else PROMPTS[::-1]
    return Prompts(safe, unsafe, scores.mean().item())


@pytest.fixture(scope="module")
def safe_clip_file(tmp_path_factory):
    return export_encoder(tiny_text_encoder(42), tmp_path_factory.mktemp("safeclip") / "text.safetensors")


@pytest.fixture
def trusted_safe_clip_file(safe_clip_file):
    """`safe_clip_file`, trusted in this test's own trust store: redirect verifies its Safe-CLIP against it."""
    from safe_encoders import trust_checkpoint

    trust_checkpoint(safe_clip_file)
    return safe_clip_file
