"""Two CPU processes (torch.distributed.run + accelerate, gloo) trained, killed, resumed: the same weights,
optimizer state, per-process RNG states and metrics as an uninterrupted 2-process run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from train.checkpoints import list_checkpoints

WORKER = Path(__file__).with_name("two_process_worker.py")
ROOT = Path(__file__).parents[2]


def launch(out: Path, port: int, crash_at: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    cmd += [str(WORKER), str(out), *([str(crash_at)] if crash_at is not None else [])]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


def final(out: Path):
    newest = list_checkpoints(out)[-1]
    files = {p.name: load_file(str(p)) for p in sorted(newest.glob("*.safetensors"))}
    lines = [{k: v for k, v in json.loads(ln).items() if k != "time"} for ln in (out / "metrics.jsonl").open()]
    return newest.name, files, lines


def test_two_processes_killed_and_resumed_equal_an_uninterrupted_run(tmp_path):
    full = launch(tmp_path / "full", 29611)
    assert full.returncode == 0, full.stderr[-3000:]
    crashed = launch(tmp_path / "crash", 29612, crash_at=3)  # mid-epoch, one step after the checkpoint of step 2
    assert crashed.returncode != 0
    assert [p.name for p in list_checkpoints(tmp_path / "crash")] == ["step-00000002"]
    resumed = launch(tmp_path / "crash", 29613)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    name, want, want_lines = final(tmp_path / "full")
    got_name, got, got_lines = final(tmp_path / "crash")
    assert name == got_name == "step-00000008"  # 32 items / 2 processes / batch 4 = 4 steps an epoch, 2 epochs
    assert sorted(want) == ["adapters.safetensors", "optimizer.safetensors", "rng-0.safetensors", "rng-1.safetensors"]
    assert not torch.equal(want["rng-0.safetensors"]["torch"], want["rng-1.safetensors"]["torch"])  # own streams
    for file, tensors in want.items():
        assert tensors.keys() == got[file].keys()
        for key in tensors:
            assert torch.equal(tensors[key], got[file][key]), (file, key)
    assert want_lines == got_lines and len(want_lines) > 8
    state = json.loads((tmp_path / "full" / "checkpoints" / name / "state.json").read_text())
    assert state["world_size"] == 2
