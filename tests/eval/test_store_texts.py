"""Generated texts in the results store (``eval i2t``)."""

from __future__ import annotations

import pytest

from eval.errors import StoreError
from eval.store.results import ResultsStore


def test_texts_are_stored_once_with_their_item_and_survive_reopening(tmp_path):
    with ResultsStore(tmp_path) as store:
        assert store.add_text("llava", "src:a.png", 0, "a cat", prompt_set="src", prompt="describe the image")
        assert not store.add_text("llava", "src:a.png", 0, "another text", prompt_set="src", prompt="p")
        assert store.add_text("llava+safe", "src:a.png", 0, "a dog", prompt_set="src", prompt="p")
        with pytest.raises(StoreError):
            store.add_text("llava", "src:b.png", 0, None, prompt_set="src", prompt="p")  # type: ignore[arg-type]
    with ResultsStore(tmp_path) as store:
        assert store.texts() == {("llava", "src:a.png", 0): "a cat", ("llava+safe", "src:a.png", 0): "a dog"}
        assert store.texts("llava+safe") == {("llava+safe", "src:a.png", 0): "a dog"}
        assert [(it.key, it.path, it.prompt_set) for it in store.items("llava")] == [
            (("llava", "src:a.png", 0), "", "src")
        ]
        assert store.remove_condition("llava") == 1
        assert store.texts() == {("llava+safe", "src:a.png", 0): "a dog"}
