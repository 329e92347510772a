"""Checkpoints survive a failure at every write step: an I/O error (a full disk) or a kill (the folder as it
is at that instant), each followed by a resume that ends exactly where an uninterrupted run ends."""

import errno
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import train.checkpoints as checkpoints
from tests.train.synthetic_builders import encoded_worlds
from train.checkpoints import list_checkpoints
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
    assert "rename into place" in names and names.index("write state.json") < names.index("rename into place")
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
    with caplog.at_level("WARNING", logger="safe_encoders.train"):
        run(tokenizer, data, root, keep_two)
    assert f"checkpoint {newest.name} is damaged" in caplog.text and "falling back" in caplog.text
    assert (root / "checkpoints" / f"{newest.name}.corrupt").is_dir()  # kept for inspection, never read
    assert_same(outcome(root), want)
    shutil.rmtree(root)
