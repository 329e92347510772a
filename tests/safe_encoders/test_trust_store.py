"""The trust store: where it lives, what an entry holds, what the user trusts, and registry checkpoints pinned on
first use (repo id + commit + per-file sha256), with a later commit or a tampered cache not trusted automatically."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from safe_encoders import CorruptCheckpointError, export_encoder, is_safe, make_safe, swap_report, trust_checkpoint
from safe_encoders.format import canonical_name, write_encoder_file
from safe_encoders.registry import CHECKPOINTS, Checkpoint, EncoderFingerprint
from safe_encoders.trust import TRUST_DIR_ENV, TrustStore, trust_dir
from tests.tiny_models import save_clip_repo, tiny_clip_model, tiny_text_encoder, write_hub_cache

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = "tinyorg/safeclip-tiny"


def test_the_store_lives_where_the_environment_says(monkeypatch, tmp_path):
    monkeypatch.setenv(TRUST_DIR_ENV, str(tmp_path / "here"))
    assert trust_dir() == tmp_path / "here"
    monkeypatch.delenv(TRUST_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert trust_dir() == tmp_path / "cache" / "safe-encoders" / "trust"


def test_trusting_a_clip_folder_writes_one_readable_entry_per_encoder(tmp_path):
    folder = save_clip_repo(tiny_clip_model(seed=5), tmp_path / "clip")
    entries = trust_checkpoint(folder)
    assert sorted(entry.kind for entry in entries) == ["text", "vision"]
    files = sorted(trust_dir().glob("*.json"))
    assert len(files) == 2
    data = json.loads(files[0].read_text())
    assert data["trusted_by"] == "user" and data["checkpoint"] == str(folder)
    assert {"float32", "float16", "bfloat16"} <= set(data["tensors"])
    assert data["config"]["hidden_act"] == "quick_gelu"


@pytest.mark.parametrize("bad", ["nan", "-inf"])
def test_a_damaged_checkpoint_is_never_trusted(tmp_path, bad):
    source = tiny_text_encoder(seed=9)
    tensors = {canonical_name(k, "text"): v.clone() for k, v in source.state_dict().items() if "position" not in k}
    tensors["text_model.final_layer_norm.weight"][3] = float(bad)
    path, _ = write_encoder_file(tmp_path / "bad.safetensors", tensors, kind="text", config=source.config.to_dict(),
                                 base_model=None, provenance={})  # fmt: skip
    with pytest.raises(CorruptCheckpointError, match="NaN or Inf"):
        trust_checkpoint(path)
    assert TrustStore().entries() == []


def test_trusting_a_file_after_the_swap_makes_it_verify(tmp_path):
    file = export_encoder(tiny_text_encoder(seed=3), tmp_path / "mine.safetensors")
    encoder = make_safe(tiny_text_encoder(seed=0), file)
    assert not is_safe(encoder, verify=True)
    trust_checkpoint(file)
    assert is_safe(encoder, verify=True)


# ---------------------------------------------------------------------------------- trust on first use


@pytest.fixture
def registered(monkeypatch):
    """A registry entry for a tiny Safe-CLIP published at REPO."""
    fingerprint = EncoderFingerprint.from_config(tiny_clip_model(seed=1).config.text_config, projection_dim=16)
    entry = Checkpoint(name="safeclip-tiny", repo_id=REPO, base_model="tiny", encoders={"text": fingerprint})
    monkeypatch.setitem(CHECKPOINTS, entry.name, entry)
    return entry


def _publish(tmp_path, seed: int, cache_name: str = "hub"):
    folder = save_clip_repo(tiny_clip_model(seed=seed), tmp_path / f"release-{seed}")
    cache = tmp_path / cache_name
    commit = write_hub_cache(cache, REPO, {n: folder / n for n in ("config.json", "model.safetensors")})
    return cache, commit


def test_a_registry_checkpoint_is_pinned_on_first_use_and_verifies(tmp_path, registered):
    cache, commit = _publish(tmp_path, seed=1)
    encoder = make_safe(tiny_text_encoder(seed=0), "safeclip-tiny", cache_dir=str(cache))
    (entry,) = TrustStore().entries()
    assert entry.trusted_by == "registry" and entry.source["repo_id"] == REPO and entry.source["commit"] == commit
    blob = (cache / "models--tinyorg--safeclip-tiny" / "snapshots" / commit / "model.safetensors").resolve().name
    assert entry.source["files"]["model.safetensors"] == blob  # the sha256 the Hub names an LFS blob by
    assert is_safe(encoder, verify=True)
    assert swap_report(encoder, verify=True)["CLIPTextModel"]["trusted_by"] == "registry"


def test_another_commit_of_a_pinned_repo_is_not_trusted_automatically(tmp_path, registered, caplog):
    first, _ = _publish(tmp_path, seed=1, cache_name="hub1")
    make_safe(tiny_text_encoder(seed=0), "safeclip-tiny", cache_dir=str(first))
    second, _ = _publish(tmp_path, seed=2, cache_name="hub2")  # the repo now serves other weights
    with caplog.at_level(logging.WARNING, logger="safe_encoders"):
        encoder = make_safe(tiny_text_encoder(seed=0), "safeclip-tiny", cache_dir=str(second))
    assert "not trusted automatically" in caplog.text
    assert len(TrustStore().entries()) == 1
    assert is_safe(encoder) and not is_safe(encoder, verify=True)


def test_a_cached_file_that_does_not_hash_to_its_blob_name_is_not_pinned(tmp_path, registered, caplog):
    from safetensors.torch import load_file, save_file

    cache, commit = _publish(tmp_path, seed=1)
    blob = (cache / "models--tinyorg--safeclip-tiny" / "snapshots" / commit / "model.safetensors").resolve()
    tensors = load_file(blob)
    tensors["text_model.final_layer_norm.bias"] += 1  # the file is changed in the cache, its blob name is not
    save_file(tensors, blob, metadata={"format": "pt"})
    with caplog.at_level(logging.WARNING, logger="safe_encoders"):
        encoder = make_safe(tiny_text_encoder(seed=0), "safeclip-tiny", cache_dir=str(cache))
    assert "does not hash to the sha256" in caplog.text
    assert TrustStore().entries() == [] and not is_safe(encoder, verify=True)
    assert torch.equal(encoder.final_layer_norm.bias, tensors["text_model.final_layer_norm.bias"])
