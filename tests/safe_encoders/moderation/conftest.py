"""The tiny HySAC every scan / search test module uses: saved once per module, and loaded from that folder."""

import pytest

from safe_encoders.hysac import HySAC
from tests.safe_encoders.moderation.scan_data import saved_tiny_hysac


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return saved_tiny_hysac(tmp_path_factory.mktemp("model") / "tiny-hysac")


@pytest.fixture(scope="module")
def model(model_dir):
    return HySAC.from_pretrained(model_dir)
