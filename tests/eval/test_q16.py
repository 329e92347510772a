from __future__ import annotations

import math
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from eval.classifiers import PAPER_RULE, AnyOf, build_classifier, registered_classifiers
from eval.classifiers import q16 as q16_mod
from eval.classifiers.q16 import (
    Q16Classifier,
    fetch_q16_prompts,
    load_array_pickle,
    load_q16_prompts,
    q16_probabilities,
)
from eval.errors import UnsafePickleError
from tests.eval.builders import shared_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(("variant", "width"), [("ViT-L-14", 768), ("ViT-B-16", 512), ("ViT-B-32", 512)])
def test_real_prompt_files_parse(variant, width):
    path = shared_file("data", f"q16_prompts_{variant}.p")
    raw = load_array_pickle(path.read_bytes())
    assert raw.dtype == np.float16 and raw.shape == (2, width)
    arr = load_q16_prompts(path)
    assert arr.dtype == np.float32 and arr.shape == (2, width)
    np.testing.assert_array_equal(arr, raw.astype(np.float32))
    norms = np.linalg.norm(arr, axis=1)
    assert np.all(norms > 1.5)  # the published rows are not unit length: cosine must normalise them


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvilOpen:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("payload", [_Evil, _EvilOpen])
def test_malicious_pickle_refused_without_executing(tmp_path, payload):
    marker = tmp_path / "pwned"
    data = pickle.dumps(payload(marker), protocol=2)
    with pytest.raises(UnsafePickleError, match=r"refusing to unpickle .*nothing was executed"):
        load_array_pickle(data)
    assert not marker.exists()
    # The same attack hidden next to a genuine array, as a file the loader is pointed at.
    mixed = tmp_path / "prompts.p"
    mixed.write_bytes(pickle.dumps([np.zeros((2, 4), np.float16), payload(marker)]))
    with pytest.raises(UnsafePickleError):
        load_q16_prompts(mixed)
    assert not marker.exists()


def test_non_array_and_object_arrays_refused():
    with pytest.raises(UnsafePickleError, match="not a plain numeric numpy array"):
        load_array_pickle(pickle.dumps(7))
    with pytest.raises(UnsafePickleError, match=r"refusing to unpickle builtins\.set|only numeric"):
        load_array_pickle(pickle.dumps(np.array([{1}, None], dtype=object), protocol=2))
    with pytest.raises(UnsafePickleError, match="not a readable pickled numpy array"):
        load_array_pickle(b"\x80\x04garbage")


@pytest.mark.parametrize("protocol", range(6))
def test_every_pickle_protocol_of_a_plain_array(protocol):
    x = np.arange(8, dtype=np.float16).reshape(2, 4)
    np.testing.assert_array_equal(load_array_pickle(pickle.dumps(x, protocol=protocol)), x)


def test_wrong_shape_refused(tmp_path):
    path = tmp_path / "p.p"
    path.write_bytes(pickle.dumps(np.zeros((3, 4), np.float32)))
    with pytest.raises(UnsafePickleError, match=r"shape \(2, width\), got float32 \(3, 4\)"):
        load_q16_prompts(path)


def test_decision_rule_on_hand_made_embeddings():
    prompts = torch.tensor([[2.0, 0.0], [0.0, 5.0]])  # not unit length, as in the real files
    images = torch.tensor([[3.0, 4.0], [4.0, 3.0], [0.3, 0.4]])
    probs = q16_probabilities(images, prompts)
    # cosines: (0.6, 0.8), (0.8, 0.6), (0.6, 0.8); logits = 100 x cosine
    expected_1 = 1 / (1 + math.exp(-20))
    assert probs[0, 1].item() == pytest.approx(expected_1, rel=1e-6)
    assert probs[1, 1].item() == pytest.approx(1 - expected_1, abs=1e-9)
    assert probs[2, 1].item() == pytest.approx(expected_1, rel=1e-6)  # scale of the image does not matter
    assert torch.allclose(probs.sum(-1), torch.ones(3))


def test_fetch_and_cache(tmp_path, monkeypatch):
    real = shared_file("data", "q16_prompts_ViT-L-14.p")
    src = q16_mod.Q16_PROMPT_FILES["ViT-L-14"]
    monkeypatch.setitem(q16_mod.Q16_PROMPT_FILES, "ViT-L-14", q16_mod.Q16PromptSource(real.as_uri(), src.sha256, 768))
    cached = fetch_q16_prompts("ViT-L-14", cache_dir=tmp_path)
    assert cached.parent == tmp_path and cached.read_bytes() == real.read_bytes()
    # Cached: the source is not read again.
    gone = tmp_path / "gone.p"
    monkeypatch.setitem(q16_mod.Q16_PROMPT_FILES, "ViT-L-14", q16_mod.Q16PromptSource(gone.as_uri(), src.sha256, 768))
    assert fetch_q16_prompts("ViT-L-14", cache_dir=tmp_path) == cached
    # A file with the wrong digest is refused and not cached.
    other = tmp_path / "other"
    other.mkdir()
    wrong = shared_file("data", "q16_prompts_ViT-B-16.p")
    monkeypatch.setitem(q16_mod.Q16_PROMPT_FILES, "ViT-L-14", q16_mod.Q16PromptSource(wrong.as_uri(), src.sha256, 768))
    with pytest.raises(UnsafePickleError, match="expected 9b6c41"):
        fetch_q16_prompts("ViT-L-14", cache_dir=other)
    assert list(other.iterdir()) == []
    with pytest.raises(OSError, match="--q16-prompts"):
        monkeypatch.setitem(
            q16_mod.Q16_PROMPT_FILES, "ViT-L-14", q16_mod.Q16PromptSource(gone.as_uri(), src.sha256, 768)
        )
        fetch_q16_prompts("ViT-L-14", cache_dir=other)


def _write_prompts(path, arr):
    path.write_bytes(pickle.dumps(arr.astype(np.float16), protocol=2))
    return path


def test_tiny_q16_end_to_end(tiny_clip_dir, photos, tmp_path):
    probe = Q16Classifier(tiny_clip_dir, np.zeros((2, 16), np.float32))
    e = probe.embed(photos[:1])[0].numpy()
    # Inappropriate prompt = the astronaut's own direction: astronaut flagged with p ~ 1.
    flag_it = Q16Classifier(tiny_clip_dir, _write_prompts(tmp_path / "a.p", np.stack([-e, e])), batch_size=2)
    verdicts = flag_it.classify(photos)
    assert len(verdicts) == 3
    assert verdicts[0].flagged and verdicts[0].score > 0.99
    # Swapped rows: the astronaut is now appropriate.
    keep_it = Q16Classifier(tiny_clip_dir, _write_prompts(tmp_path / "b.p", np.stack([e, -e])))
    assert not keep_it.classify(photos[:1])[0].flagged
    # Batched and one-at-a-time give the same scores.
    one_by_one = [flag_it.classify([im])[0].score for im in photos]
    assert [v.score for v in verdicts] == pytest.approx(one_by_one, abs=1e-5)
    # Verdicts agree with the rule applied to the model's own image_embeds.
    probs = q16_probabilities(
        flag_it.embed(photos), torch.tensor(np.stack([-e, e]).astype(np.float16), dtype=torch.float32)
    )
    assert [v.flagged for v in verdicts] == [bool(p[1] > p[0]) for p in probs]


def test_q16_width_mismatch(tiny_clip_dir):
    with pytest.raises(ValueError, match=r"shape \(2, 768\) but .* width 16"):
        Q16Classifier(tiny_clip_dir, load_q16_prompts(shared_file("data", "q16_prompts_ViT-L-14.p")))


def test_q16_folder_without_processor_config(tiny_clip_dir, tmp_path, photos):
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(tiny_clip_dir / f, bare / f)
    a = Q16Classifier(bare, np.ones((2, 16), np.float32)).embed(photos[:1])
    b = Q16Classifier(tiny_clip_dir, np.ones((2, 16), np.float32)).embed(photos[:1])
    assert torch.allclose(a, b, atol=1e-5)


def test_registry_and_combined_rule(tiny_clip_dir, photos, tmp_path):
    pytest.importorskip("nudenet", reason="nudenet is not installed (pip install 'safe-encoders[eval]')")
    assert set(PAPER_RULE) <= set(registered_classifiers())
    with pytest.raises(ValueError, match="did you mean 'q16'"):
        build_classifier("q15")
    probe = Q16Classifier(tiny_clip_dir, np.zeros((2, 16), np.float32))
    e = probe.embed(photos[:1])[0].numpy()
    q16 = build_classifier("q16", model=tiny_clip_dir, prompts=np.stack([-e, e]))
    nude = build_classifier("nudenet")
    combined = AnyOf([q16, nude])
    assert combined.name == "q16|nudenet"
    out = combined.classify(photos)
    q_flags = [v.flagged for v in q16.classify(photos)]
    n_flags = [v.flagged for v in nude.classify(photos)]
    assert n_flags == [False, False, False]  # nothing exposed in these photos
    assert [v.flagged for v in out] == [q or n for q, n in zip(q_flags, n_flags, strict=True)]
    assert out[0].flagged and out[0].details["q16"].flagged and not out[0].details["nudenet"].flagged
    # Reversed Q16 prompts: neither flags the astronaut.
    q16_rev = build_classifier("q16", model=tiny_clip_dir, prompts=np.stack([e, -e]))
    assert not AnyOf([q16_rev, nude]).classify(photos[:1])[0].flagged
