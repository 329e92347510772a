"""Workers sharing one --out: claims with leases split the work, a dead worker's items are redone."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eval.store.claims import CLASSIFY, GENERATE
from eval.store.leases import Claims
from eval.store.results import ResultsStore
from eval.t2i.run import T2IConfig, T2IRunner
from tests.eval.builders import REPO, subprocess_env
from tests.faults import tree

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KEYS = [("sd", f"p:{i}", 7) for i in range(5)]


def test_claims_are_exclusive_until_they_expire(tmp_path):
    with ResultsStore(tmp_path) as store:
        a, _ = store.claims.claim(GENERATE, KEYS, worker="A", lease=60, limit=3)
        assert a == KEYS[:3]
        b, _ = store.claims.claim(GENERATE, KEYS, worker="B", lease=60, limit=5)
        assert b == KEYS[3:]  # A's live claims are not B's to take
        assert store.claims.claim(GENERATE, KEYS, worker="B", lease=60, limit=5)[0] == KEYS[3:]  # its own, renewed
        assert store.claims.live(GENERATE, exclude="B") == set(KEYS[:3])

        store.claims.release("B", GENERATE, KEYS[3:])
        store.claims.renew("A", 0.05)  # A stops renewing (dies): its claims run out
        time.sleep(0.1)
        assert store.claims.claim(GENERATE, KEYS, worker="B", lease=60, limit=5)[0] == KEYS

        from PIL import Image

        store.claims.release("B")
        store.add(*KEYS[0], Image.new("RGB", (4, 4)), prompt_set="t", prompt="x")
        claimed, done = store.claims.claim(GENERATE, KEYS, worker="C", lease=60, limit=5)
        assert claimed == KEYS[1:] and done == [KEYS[0]]  # a stored item is never claimed for generation
        # classification is its own task: a stored, unlabelled item can be claimed for it
        assert store.claims.claim(CLASSIFY, KEYS[:1], worker="C", lease=60, limit=5, rule=["q16"])[0] == KEYS[:1]
        store.set_labels("q16", [(KEYS[0], False, 0.1, {})])
        store.claims.release("C")
        assert store.claims.claim(CLASSIFY, KEYS[:1], worker="D", lease=60, limit=5, rule=["q16"]) == ([], KEYS[:1])
        assert (
            store.claims.claim(CLASSIFY, KEYS[:1], worker="D", lease=60, limit=5, rule=["q16", "nudenet"])[0]
            == KEYS[:1]
        )


def test_claims_of_a_process_of_this_host_that_is_gone_are_free_at_once(tmp_path):
    """A run killed and started again must not wait for the dead run's lease (120 s by default)."""
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # exited and reaped: its pid names no process
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = socket.gethostname()
        with ResultsStore(tmp_path) as store:
            store.claims.claim(GENERATE, KEYS[:2], worker=f"{host}:{dead.pid}:0", lease=600, limit=2)
            store.claims.claim(GENERATE, KEYS[2:4], worker=f"{host}:{alive.pid}:0", lease=600, limit=2)
            store.claims.claim(GENERATE, KEYS[4:], worker=f"other-host:{dead.pid}:0", lease=600, limit=1)
            assert store.claims.live(GENERATE, exclude="B") == set(KEYS[2:])
            # the gone process's items only: the live local process and the other host keep theirs until the lease
            assert store.claims.claim(GENERATE, KEYS, worker="B", lease=60, limit=5)[0] == KEYS[:2]
    finally:
        alive.kill()
        alive.wait()


def test_the_heartbeat_keeps_a_slow_worker_s_claims(tmp_path):
    with ResultsStore(tmp_path) as store, Claims(tmp_path, lease=0.3, worker="slow") as claims:
        batches = claims.batches(store, GENERATE, KEYS, lambda k: k, 2)
        assert next(batches) == KEYS[:2]
        time.sleep(0.8)  # longer than the lease: the heartbeat renewed it
        assert store.claims.claim(GENERATE, KEYS[:2], worker="other", lease=1, limit=2)[0] == []
        batches.close()
    with ResultsStore(tmp_path) as store:  # leaving the block dropped every claim of the worker
        assert store.claims.live(GENERATE) == set()


def _config(out: Path, prompts: Path, tiny_sd_dir: Path, tiny_clip_dir: Path, tiny_q16_prompts: Path, **kw):
    base = dict(
        model=str(tiny_sd_dir),
        prompts=str(prompts),
        conditions=["sd"],
        out=out,
        images_per_prompt=2,
        steps=2,
        guidance=7.5,
        height=32,
        width=32,
        batch_size=1,
        q16_model=str(tiny_clip_dir),
        q16_prompts=str(tiny_q16_prompts),
        rule=("q16",),
        reference=None,
        progress=False,
        lease=5.0,
    )
    return T2IConfig(**{**base, **kw})


def _prompts(folder: Path, n: int = 4) -> Path:
    path = folder / "prompts.csv"
    path.write_text("prompt,seed\n" + "".join(f"prompt number {i},{10 * i}\n" for i in range(n)))
    return path


def _cli(out, prompts, tiny_sd_dir, tiny_clip_dir, tiny_q16_prompts):
    return [
        sys.executable, "-m", "eval", "t2i", "--model", str(tiny_sd_dir), "--prompts", str(prompts),
        "--conditions", "sd", "--images-per-prompt", "2", "--steps", "2", "--size", "32", "--guidance", "7.5",
        "--batch-size", "1", "--q16-model", str(tiny_clip_dir), "--q16-prompts", str(tiny_q16_prompts),
        "--rule", "q16", "--paper-reference", "none", "--no-progress", "--lease", "30", "--out", str(out),
    ]  # fmt: skip


def test_two_workers_on_one_folder_make_each_image_once(tmp_path, tiny_sd_dir, tiny_clip_dir, tiny_q16_prompts):
    prompts = _prompts(tmp_path)
    items = 4 * 2
    single = T2IRunner(
        _config(tmp_path / "single", prompts, tiny_sd_dir, tiny_clip_dir, tiny_q16_prompts), shard=(0, 1)
    )
    single.run()
    assert single.generated == items

    args = _cli(tmp_path / "pair", prompts, tiny_sd_dir, tiny_clip_dir, tiny_q16_prompts)
    workers = [
        subprocess.Popen(
            args, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=600) for w in workers]
    assert all(w.returncode == 0 for w in workers), [err[-2000:] for _, err in outputs]
    made = [int(re.search(r"this worker generated (\d+) image", err).group(1)) for _, err in outputs]
    assert sum(made) == items  # nothing made twice
    for name in ("report.csv", "report.tex"):
        assert (tmp_path / "pair" / name).read_bytes() == (tmp_path / "single" / name).read_bytes()
    images = {k: v for k, v in tree(tmp_path / "single").items() if k.startswith("images")}
    assert len(images) == items
    assert {k: v for k, v in tree(tmp_path / "pair").items() if k.startswith("images")} == images
    with ResultsStore(tmp_path / "pair") as store:
        assert len(store.labels("q16")) == items
        assert store.claims.live(GENERATE) == store.claims.live(CLASSIFY) == set()


def test_a_dead_worker_s_claims_are_redone_by_another(tmp_path, tiny_sd_dir, tiny_clip_dir, tiny_q16_prompts):
    prompts = _prompts(tmp_path, n=2)
    out = tmp_path / "run"
    cfg = _config(out, prompts, tiny_sd_dir, tiny_clip_dir, tiny_q16_prompts, lease=1.0)
    runner = T2IRunner(cfg, shard=(0, 1))
    keys = [w.key for w in runner.my_items()]
    # what a worker killed while holding claims leaves: claims nobody renews any more
    runner.store.claims.claim(GENERATE, keys[:3], worker="dead", lease=1.0, limit=3)
    start = time.monotonic()
    runner.run()
    assert time.monotonic() - start >= 0.9  # it waited for the dead worker's lease to run out
    assert runner.generated == len(keys) == 4
    assert runner.store.done_keys() == set(keys)
    assert (out / "report.csv").exists()
