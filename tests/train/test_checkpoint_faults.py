"""Checkpoints survive a failure at every write step: an I/O error (a full disk) or a kill (the folder as it
is at that instant), each followed by a resume that ends exactly where an uninterrupted run ends."""

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train.checkpoints as checkpoints
from tests.train.synthetic_builders import encoded_worlds, save_tiny_base, synthetic_run_overrides
from train.checkpoints import (
    ProcessCountError,
    Processes,
    find_resume_checkpoint,
    list_checkpoints,
    read_checkpoint,
    save_checkpoint,
)
from train.config import load_config
from train.data import stack_encoded
from train.loop import run_training
from train.model import SafeClipModel
from train.tiny_clip import tiny_clip

FAULT_STEP = 4  # faults are injected while the checkpoint of this step is written (step 2's exists, keep=1)


@pytest.fixture(scope="module")
def data(tokenizer):
    return encoded_worlds(tokenizer, 24, 8)


def config(root, **over):
    overrides = [
        f"output_dir={root}",
        "data.batch_size=4",
        "optim.epochs=1",
        "progress=false",
        "lora.rank=2",
        "lora.alpha=2",
        "optim.lr=1e-2",
        "save_every_steps=2",
        "keep_checkpoints=1",
        "lora.dropout=0.1",  # the RNG matters: a resume must restore it
    ]
    return load_config(None, overrides + [f"{k}={v}" for k, v in over.items()])


def run(tokenizer, data, root, over=None, **kwargs):
    cfg = config(root, **(over or {}))
    checkpoints.seed_everything(cfg.seed)
    text, vision = tiny_clip(tokenizer, 32, width=16, layers=1, projection_dim=16)
    model = SafeClipModel(text, vision, cfg.lora)
    return run_training(cfg, model, *data, stack_encoded, **kwargs)


def outcome(root):
    """The final checkpoint's adapters and the metrics log (wall times aside)."""
    adapters = load_file(str(list_checkpoints(root)[-1] / "adapters.safetensors"))
    lines = [
        {k: v for k, v in json.loads(ln).items() if k != "time"}
        for ln in (root / "metrics.jsonl").read_text().splitlines()
    ]
    return adapters, lines


def assert_same(a, b):
    assert a[0].keys() == b[0].keys() and a[0]
    for key in a[0]:
        assert torch.equal(a[0][key], b[0][key]), key
    assert a[1] == b[1]


def leftovers(root):
    folder = root / "checkpoints"
    return sorted(p.name for p in folder.iterdir() if p not in list_checkpoints(root))


class Killed(BaseException):
    """Stands for the end of a killed process: no handler of the code under test catches it."""


@pytest.fixture(scope="module")
def reference(tokenizer, data, tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    names = []
    original = checkpoints._write_step

    def record(name, action):
        if current_step[0] == FAULT_STEP:
            names.append(name)
        original(name, action)

    current_step = [0]

    def on_step(step):  # the checkpoint of step N is written before on_step(N), so after on_step(N - 1)
        current_step[0] = step + 1

    try:
        checkpoints._write_step = record
        run(tokenizer, data, root, on_step=on_step)
    finally:
        checkpoints._write_step = original
    return outcome(root), names


def test_the_steps_of_a_checkpoint_write_are_the_ones_faults_are_injected_into(reference):
    _, names = reference
    assert names[:3] == ["clear an older temporary folder", "create the temporary folder", "write rng-0.safetensors"]
    assert "rename into place" in names
    # the digest of state.json comes last: a folder with it holds everything
    assert (
        names.index("write state.json") + 1
        == names.index("write state.json.sha256")
        < names.index("flush the temporary folder")
    )
    assert names[-2:] == ["retire step-00000002", "remove step-00000002"]  # keep=1: the older one goes


def _inject(monkeypatch, index, fault):
    """Make the ``index``-th write step of the checkpoint of FAULT_STEP fail with ``fault(name, action)``."""
    seen = [0]
    original = checkpoints._write_step

    def faulty(name, action):
        if saving[0] == FAULT_STEP:
            if seen[0] == index:
                fault(name, action)
            seen[0] += 1
        original(name, action)

    saving = [0]
    monkeypatch.setattr(checkpoints, "_write_step", faulty)

    def on_step(step):  # the checkpoint of step N is written before on_step(N), so after on_step(N - 1)
        saving[0] = step + 1

    return on_step


def test_an_io_error_at_any_write_step_leaves_a_resumable_run(tokenizer, data, tmp_path, monkeypatch, reference):
    want, names = reference
    for index, name in enumerate(names):
        root = tmp_path / f"oserror-{index}"

        def disk_full(name, action):
            raise OSError(errno.ENOSPC, "No space left on device")

        track = _inject(monkeypatch, index, disk_full)
        with pytest.raises(OSError, match="No space left"):
            run(tokenizer, data, root, on_step=track)
        monkeypatch.undo()
        assert list_checkpoints(root), name  # the previous checkpoint is still complete
        run(tokenizer, data, root)
        assert_same(outcome(root), want)
        assert leftovers(root) == [], name


def test_a_kill_at_any_write_step_leaves_a_resumable_run(tokenizer, data, tmp_path, monkeypatch, reference):
    want, names = reference
    for index, name in enumerate(names):
        root = tmp_path / f"kill-{index}"

        def kill(name, action, root=root):
            # a kill mid-write leaves a temporary file cut short beside what exists at that instant
            tmp = root / "checkpoints" / f"step-{FAULT_STEP:08d}.tmp"
            if name.startswith("write ") and tmp.is_dir():
                (tmp / f".{name.split()[1]}.abc.tmp").write_bytes(b"\x00" * 10)
            raise Killed

        track = _inject(monkeypatch, index, kill)
        with pytest.raises(Killed):
            run(tokenizer, data, root, on_step=track)
        monkeypatch.undo()
        run(tokenizer, data, root)
        assert_same(outcome(root), want)
        assert leftovers(root) == [], name


@pytest.mark.parametrize(
    "damage", ["truncate adapters", "flip a byte of adapters", "empty state.json", "remove optimizer"]
)
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(
    tokenizer, data, tmp_path, reference, caplog, damage
):
    want, _ = reference
    root = tmp_path / "damaged"

    def stop(step):
        if step == FAULT_STEP + 1:
            raise Killed

    keep_two = {"keep_checkpoints": 2}  # so that there is one to fall back to
    with pytest.raises(Killed):
        run(tokenizer, data, root, keep_two, on_step=stop)
    newest = list_checkpoints(root)[-1]
    assert newest.name == f"step-{FAULT_STEP:08d}"
    if damage == "truncate adapters":
        blob = (newest / "adapters.safetensors").read_bytes()
        (newest / "adapters.safetensors").write_bytes(blob[: len(blob) // 2])
    elif damage == "flip a byte of adapters":  # still a readable file: only the digest tells
        blob = bytearray((newest / "adapters.safetensors").read_bytes())
        blob[-3] ^= 0x40
        (newest / "adapters.safetensors").write_bytes(bytes(blob))
    elif damage == "empty state.json":
        (newest / "state.json").write_text("")
    else:
        (newest / "optimizer.safetensors").unlink()
    with caplog.at_level("WARNING", logger="train"):
        run(tokenizer, data, root, keep_two)
    assert f"checkpoint {newest.name} is damaged" in caplog.text and "falling back" in caplog.text
    assert (root / "checkpoints" / f"{newest.name}.corrupt").is_dir()  # kept for inspection, never read
    assert_same(outcome(root), want)
    shutil.rmtree(root)


@pytest.fixture(scope="module")
def two_checkpoints(tokenizer, data, tmp_path_factory):
    """A finished run keeping its two newest checkpoints (steps 4 and 6)."""
    root = tmp_path_factory.mktemp("two")
    run(tokenizer, data, root, {"keep_checkpoints": 2})
    assert [p.name for p in list_checkpoints(root)] == ["step-00000004", "step-00000006"]
    return root


def _state_with_matching_digest(folder, text):
    """Replace state.json by ``text`` and write the digest file that matches it (a state.json that is whole,
    as its digest says, but not a checkpoint state)."""
    (folder / "state.json").write_text(text)
    digest = hashlib.sha256(text.encode()).hexdigest()
    (folder / "state.json.sha256").write_text(f"{digest}  state.json\n")


def _edit_state(folder):
    """A state.json still valid JSON but not the one written (its digest file tells)."""
    state = json.loads((folder / "state.json").read_text())
    state["batches_done"] += 1
    (folder / "state.json").write_text(json.dumps(state))


DAMAGES = {
    "state.json holds []": (lambda f: _state_with_matching_digest(f, "[]"), "holds a JSON list"),
    "state.json holds null": (lambda f: _state_with_matching_digest(f, "null"), "holds a JSON NoneType"),
    "state.json edited": (_edit_state, "is not the file state.json.sha256 was written for"),
    "no digest file": (lambda f: (f / "state.json.sha256").unlink(), "has no state.json.sha256"),
    "no state.json": (lambda f: (f / "state.json").unlink(), "No such file"),
    "files not a map": (
        lambda f: _state_with_matching_digest(
            f, json.dumps({**json.loads((f / "state.json").read_text()), "files": []})
        ),
        "'files' is not a map",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_state_json_falls_back_to_the_previous_checkpoint(two_checkpoints, tmp_path, caplog, damage):
    root = tmp_path / "run"
    shutil.copytree(two_checkpoints, root)
    older, newest = list_checkpoints(root)
    spoil, reason = DAMAGES[damage]
    spoil(newest)
    with caplog.at_level("WARNING", logger="train"):
        chosen = find_resume_checkpoint(root)
    assert chosen is not None and chosen.path == older
    assert f"checkpoint {newest.name} is damaged" in caplog.text and reason in caplog.text


def test_a_checkpoint_of_the_previous_format_without_a_state_digest_still_resumes(two_checkpoints, tmp_path):
    root = tmp_path / "run"
    shutil.copytree(two_checkpoints, root)
    newest = list_checkpoints(root)[-1]
    state = json.loads((newest / "state.json").read_text())
    assert state["format_version"] == 3
    (newest / "state.json").write_text(json.dumps({**state, "format_version": 2}))
    (newest / "state.json.sha256").unlink()
    assert find_resume_checkpoint(root).path == newest


def _save_as_two_processes(root, step):
    """The checkpoint of ``step`` as a 2-process launch writes it: two ranks (threads here) with a barrier."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    barrier = threading.Barrier(2)
    errors = []

    def rank(r):
        try:
            state = {"global_step": step, "epoch": 0, "batches_done": step}
            processes = Processes(r, 2, barrier.wait)
            save_checkpoint(
                root,
                state,
                adapters=model.state_dict,
                optimizer=optimizer,
                scheduler=scheduler,
                keep=5,
                processes=processes,
            )
        except BaseException as error:  # reported below
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_a_relaunch_with_another_process_count_is_refused_and_keeps_every_checkpoint(tokenizer, data, tmp_path):
    root = tmp_path / "run"
    for step in (2, 4):
        _save_as_two_processes(root, step)
    written = [p.name for p in list_checkpoints(root)]
    assert written == ["step-00000002", "step-00000004"]
    assert read_checkpoint(root / "checkpoints" / written[-1], rank=1, world_size=2).global_step == 4
    with pytest.raises(ProcessCountError, match=r"written by 2 process.*launch it with --num_processes 2"):
        run(tokenizer, data, root)
    assert [p.name for p in list_checkpoints(root)] == written  # none set aside as damaged, none replaced
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == written


def test_the_damaged_checkpoint_warning_reaches_the_command_line(tokenizer, tmp_path):
    from train.__main__ import main

    base = save_tiny_base(tokenizer, tmp_path / "base", width=16)
    run_dir = tmp_path / "run"
    overrides = synthetic_run_overrides(base, run_dir, "data.batch_size=8", "save_every_steps=1", "keep_checkpoints=2")
    assert main(["safeclip", *overrides]) == 0
    newest = list_checkpoints(run_dir)[-1]
    (newest / "adapters.safetensors").write_bytes(b"\x00" * 10)
    root = Path(__file__).parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "train", "safeclip", *overrides],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"checkpoint {newest.name} is damaged" in done.stderr and "falling back" in done.stderr
