from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eval.errors import StoreError
from eval.store.results import ResultsStore
from tests.eval.builders import subprocess_env

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[2]


def _img(value: int, size: int = 16) -> Image.Image:
    return Image.fromarray(np.full((size, size, 3), value % 256, np.uint8))


def test_add_resume_and_no_duplicates(tmp_path):
    with ResultsStore(tmp_path) as store:
        assert store.add("sd", "i2p:0", 5, _img(1), prompt_set="i2p", prompt="p", categories=["sexual"])
        assert not store.add("sd", "i2p:0", 5, _img(2), prompt_set="i2p", prompt="p", categories=["sexual"])
        store.add("sd+safe", "i2p:0", 5, _img(3), prompt_set="i2p", prompt="p", categories=["sexual", "hate"])
    with ResultsStore(tmp_path) as again:  # a new process would see the same
        assert len(again) == 2
        assert again.has("sd", "i2p:0", 5) and not again.has("sd", "i2p:0", 6)
        assert again.done_keys("sd") == {("sd", "i2p:0", 5)}
        items = again.items()
        assert [it.condition for it in items] == ["sd", "sd+safe"]
        assert items[1].categories == ("sexual", "hate")
        # the second add of the same key overwrote the file with an identical-key image, the row stayed
        assert again.load_image(items[0]).size == (16, 16)
        assert (tmp_path / items[0].path).is_file()
        assert ":" not in items[0].path  # prompt ids are made file-system safe


def test_condition_config_conflict(tmp_path):
    with ResultsStore(tmp_path) as store:
        store.register_condition("sd", {"model": "m", "steps": 50})
        store.register_condition("sd", {"steps": 50, "model": "m"})  # same meaning, any key order
        with pytest.raises(StoreError, match=r"'steps': \(50, 25\).*another --out"):
            store.register_condition("sd", {"model": "m", "steps": 25})
        assert store.conditions() == {"sd": {"model": "m", "steps": 50}}


def test_labels_rerun_without_regenerating(tmp_path):
    with ResultsStore(tmp_path) as store:
        for seed in range(3):
            store.add("sd", "a:1", seed, _img(seed), prompt_set="a", prompt="x")
        keys = sorted(store.done_keys())
        store.set_labels("q16", [(keys[0], True, 0.9, {}), (keys[1], False, 0.1, {"why": "x"})])
        assert [it.key for it in store.unlabelled("q16")] == [keys[2]]
        assert store.labels("q16")[keys[1]]["q16"].details == {"why": "x"}
        store.set_labels("q16", [(keys[0], False, 0.2, {})])  # overwrite
        assert not store.labels()[keys[0]]["q16"].flagged
        assert store.clear_labels("q16") == 2
        assert len(store.unlabelled("q16")) == 3 and len(store) == 3
        store.set_meta("config", {"steps": 2})
        assert store.get_meta("config") == {"steps": 2} and store.get_meta("missing", 7) == 7
        assert store.remove_condition("sd") == 3 and len(store) == 0


_WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from PIL import Image
    from eval.store.results import ResultsStore
    root, start, stop, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    store = ResultsStore(root)
    rng = np.random.default_rng(start)
    for i in range(start, stop):
        img = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        store.add("c", f"p:{i % 7}", i, img, prompt_set="p", prompt=str(i))
        print(i, flush=True)
    """
)


def _writer(root, start, stop, size=64):
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(root), str(start), str(stop), str(size)],
        cwd=REPO,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        text=True,
    )


def test_concurrent_processes_overlapping_work(tmp_path):
    procs = [_writer(tmp_path, 0, 60), _writer(tmp_path, 30, 90)]  # items 30..59 written by both
    for p in procs:
        p.communicate(timeout=120)
        assert p.returncode == 0
    with ResultsStore(tmp_path) as store:
        keys = [it.key for it in store.items()]
        assert len(keys) == len(set(keys)) == 90
        assert {k[2] for k in keys} == set(range(90))


def test_killed_writer_leaves_only_complete_rows(tmp_path):
    proc = _writer(tmp_path, 0, 100_000, size=256)
    for _ in range(5):  # wait until it has written a few items
        proc.stdout.readline()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    with ResultsStore(tmp_path) as store:
        items = store.items()
        assert 5 <= len(items) < 100_000
        for it in items:  # every committed row points at a complete, readable image
            with Image.open(tmp_path / it.path) as im:
                im.load()
                assert im.size == (256, 256)
        # resuming: a new writer over the same range adds only what is missing
        done = len(items)
    proc2 = _writer(tmp_path, 0, done + 3, size=256)
    proc2.communicate(timeout=120)
    with ResultsStore(tmp_path) as store:
        keys = [it.key for it in store.items()]
        assert len(keys) == len(set(keys)) == done + 3
