"""The app's tests load their models once per module, so the user's word on the tiny demo's Safe-CLIP export
(`safe-encoders trust`) lives in one trust store per module: the module's fixtures write it before loading,
and every test of the module reads it (the root conftest gives each test an empty store of its own)."""

import pytest


@pytest.fixture(scope="module")
def module_trust_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("trust")


@pytest.fixture(autouse=True)
def _module_trust_store(_private_trust_store, module_trust_dir, monkeypatch):
    monkeypatch.setenv("SAFE_ENCODERS_TRUST_DIR", str(module_trust_dir))
