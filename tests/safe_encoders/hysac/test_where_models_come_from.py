"""A HySAC model that cannot be found: the message says where HySAC models come from (the Hub id, a local folder,
the demo's export) and never offers Safe-CLIP encoder names; offline, the miss is reported at once."""

import time

import pytest

from safe_encoders import CheckpointNotFoundError
from safe_encoders.hysac import HySAC
from safe_encoders.hysac import checkpoints as hysac_checkpoints
from safe_encoders.registry import CHECKPOINTS

SAFE_CLIP_NAMES = [name for name in CHECKPOINTS if name != "hysac"]


def _message(source, **hub_kwargs) -> str:
    with pytest.raises(CheckpointNotFoundError) as error:
        HySAC.from_pretrained(source, **hub_kwargs)
    return str(error.value)


@pytest.mark.parametrize("source", ["out/demo/hysac_exprot", "no-such-model", "a/b/c"])
def test_a_name_that_is_no_path_or_hub_id_says_where_hysac_models_come_from(source):
    message = _message(source)
    assert message.startswith(f"HySAC model {source!r} is not an existing file or folder")
    for where in ("'aimagelab/HySAC'", "a local folder", "out/demo/hysac_export", "python -m train demo"):
        assert where in message
    assert not [name for name in SAFE_CLIP_NAMES if name in message]


def test_a_safe_clip_checkpoint_name_is_not_taken_for_a_hysac_model():
    message = _message("safeclip-vit-l-14")
    assert "names a Safe-CLIP encoder checkpoint, not a HySAC model" in message
    assert "aimagelab/HySAC" in message


def test_a_folder_without_a_model_and_a_hub_miss_say_where_models_come_from(tmp_path):
    assert "out/demo/hysac_export" in _message(tmp_path)
    message = _message("someone/absent-hysac", cache_dir=tmp_path / "empty")
    assert "not in the local Hugging Face cache" in message and "out/demo/hysac_export" in message


def test_offline_is_detected_at_once_when_the_hub_does_not_answer(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE unset and a Hub endpoint that refuses connections: one failed connection check, then the
    cache alone (no retries against the endpoint)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    assert not hysac_checkpoints.hub_reachable()
    calls = []
    download = hysac_checkpoints.hub_file

    def recording(repo_id, filename, **kwargs):
        calls.append(kwargs.get("local_files_only"))
        return download(repo_id, filename, **kwargs)

    monkeypatch.setattr(hysac_checkpoints, "hub_file", recording)
    start = time.monotonic()
    message = _message("someone/absent-hysac", cache_dir=tmp_path / "empty")
    assert time.monotonic() - start < 10
    assert calls and all(calls)  # every Hub file was looked up in the cache only
    assert "not in the local Hugging Face cache" in message


def test_hf_hub_offline_needs_no_connection_check(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def no_socket(*args, **kwargs):
        raise AssertionError("no connection is tried when HF_HUB_OFFLINE is set")

    monkeypatch.setattr("socket.create_connection", no_socket)
    assert not hysac_checkpoints.hub_reachable()
