"""Damaged checkpoints and wrong arguments get an error that names the file and what is wrong."""

from __future__ import annotations

import json
import os
import warnings

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from safe_encoders import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    export_encoder,
    load_text_encoder,
    make_safe,
)
from tests.tiny_models import save_clip_repo, tiny_clip_model, tiny_sd_pipeline, tiny_text_encoder


@pytest.fixture(scope="module")
def our_file(tmp_path_factory):
    return export_encoder(tiny_text_encoder(seed=3), tmp_path_factory.mktemp("ours") / "text_encoder.safetensors")


def rewrite_metadata(src, dst, **changes):
    """Copy one of our files with some metadata entries replaced (tensors and digests untouched)."""
    with safe_open(src, framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    metadata.update({f"safe_encoders.{key}": value for key, value in changes.items()})
    save_file(tensors, dst, metadata=metadata)
    return dst


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format_version": "one"}, r"format_version 'one' is not a number"),
        ({"config": "[1, 2]"}, r"config is a JSON list, not an object"),
        ({"tensor_digests": '"abc"'}, r"tensor_digests is a JSON str, not an object"),
        ({"provenance": "{not json"}, r"damaged safe_encoders metadata \(JSONDecodeError"),
    ],
)
def test_damaged_metadata_of_our_file(tmp_path, our_file, changes, message):
    path = rewrite_metadata(our_file, tmp_path / "damaged.safetensors", **changes)
    with pytest.raises(CorruptCheckpointError, match=rf"{path}: .*{message}"):
        load_text_encoder(path)


@pytest.fixture
def clip_folder(tmp_path):
    return save_clip_repo(tiny_clip_model(1), tmp_path / "clip")


def test_truncated_config_json(clip_folder):
    config = clip_folder / "config.json"
    config.write_text(config.read_text()[:100])
    with pytest.raises(CorruptCheckpointError, match=rf"{config} is not valid JSON .*truncated or damaged"):
        load_text_encoder(clip_folder)


def test_config_json_holding_a_list(clip_folder):
    (clip_folder / "config.json").write_text("[1, 2, 3]")
    with pytest.raises(CorruptCheckpointError, match=r"config.json holds a JSON list, not an object"):
        load_text_encoder(clip_folder)


def _shard(folder):
    """Turn the folder's model.safetensors into a one-shard checkpoint with an index; returns the index path."""
    (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
    with safe_open(folder / "model-00001-of-00001.safetensors", framework="pt") as handle:
        names = list(handle.keys())
    index = folder / "model.safetensors.index.json"
    index.write_text(
        json.dumps({"metadata": {}, "weight_map": dict.fromkeys(names, "model-00001-of-00001.safetensors")})
    )
    return index, names


def test_index_without_weight_map(clip_folder):
    index, _ = _shard(clip_folder)
    index.write_text(json.dumps({"metadata": {}}))
    with pytest.raises(CorruptCheckpointError, match=rf"{index}: an index file needs a 'weight_map' object"):
        load_text_encoder(clip_folder)


@pytest.mark.parametrize(
    "escape", ["../outside.safetensors", "/{tmp}/outside.safetensors", "sub/../../outside.safetensors"]
)
def test_index_shard_outside_the_folder_is_never_opened(clip_folder, escape):
    index, names = _shard(clip_folder)
    outside = clip_folder.parent / "outside.safetensors"
    outside.write_bytes(b"opening this file fails loudly: it is not safetensors")
    shard = escape.format(tmp=str(clip_folder.parent).strip("/"))
    index.write_text(json.dumps({"weight_map": dict.fromkeys(names, shard)}))
    with pytest.raises(
        CorruptCheckpointError, match=r"names a shard .*outside.safetensors.* outside its folder; refusing"
    ):
        load_text_encoder(clip_folder)


def test_a_symlink_loop_given_as_a_relative_path_is_not_taken_for_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org").mkdir()
    os.symlink("b", tmp_path / "org" / "a")
    os.symlink("a", tmp_path / "org" / "b")
    with pytest.raises(CheckpointNotFoundError, match=r"org/a is a symlink loop"):
        load_text_encoder("org/a")
    os.symlink("missing", tmp_path / "org" / "dangling")
    with pytest.raises(CheckpointNotFoundError, match=r"org/dangling is a symlink to a missing file"):
        load_text_encoder("org/dangling")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"revision": 123}, r"revision=123 is a int; revision must be a string \(a branch, tag or commit hash\)"),
        ({"local_files_only": "yes"}, r"local_files_only='yes' is a str; local_files_only must be True or False"),
    ],
)
def test_hub_arguments_of_the_wrong_type(kwargs, message):
    with pytest.raises(TypeError, match=message):
        load_text_encoder("someorg/some-model", **kwargs)


def test_a_tokenizer_smaller_than_the_embedding_table_is_warned_about(tmp_path, our_file):
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "cat</w>": 3}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    small = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    pipe = tiny_sd_pipeline("v1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_safe(pipe, our_file)  # the real CLIP tokenizer: 49408 tokens, no warning
    assert not [w for w in caught if "tokenizer" in str(w.message)]
    pipe = tiny_sd_pipeline("v1")
    pipe.register_modules(tokenizer=small)
    with pytest.warns(UserWarning, match=r"pipe.text_encoder: its tokenizer has 4 tokens but the encoder's "
                      r"embedding table has 49408 rows"):  # fmt: skip
        make_safe(pipe, our_file)
