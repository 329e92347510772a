"""Training checkpoints that survive any crash, and the RNG state of every process.

A checkpoint is a folder ``OUTPUT_DIR/checkpoints/step-NNNNNNNN`` holding ``adapters.safetensors`` (the
trainable tensors), ``optimizer.safetensors``, one ``rng-RANK.safetensors`` per process, ``state.json`` (loop
position, scheduler, optimizer scalars and the SHA-256 of every other file) and, written last,
``state.json.sha256`` (the SHA-256 of ``state.json``, as ``sha256sum`` writes it). A checkpoint is complete only
when that last file exists and matches.

Writing (:func:`save_checkpoint`): everything goes into ``step-N.tmp``, each file atomically; every process
writes its own RNG file; the main process then writes ``state.json``, flushes the folder and renames it to
``step-N``. A kill or an I/O error (a full disk) at any point leaves the complete checkpoints as they were
plus leftovers (``*.tmp``, ``*.old``) that are never read and are removed by the next save or resume.

Reading (:func:`find_resume_checkpoint`): the newest checkpoint whose ``state.json`` matches its digest file and
whose files all match the digests of its ``state.json`` is used; a newer one that does not (damaged on disk,
truncated by a bad copy) is reported in a warning, moved aside as ``step-N.corrupt`` and the previous one is used
instead. Nothing is unpickled. A checkpoint written by another number of processes is not damaged: the resume
is refused (:class:`ProcessCountError`) and every checkpoint is left as it is.

Warnings go to the ``train.checkpoints`` logger. The ``train`` loggers have no handler of their own, so when the
program has not configured logging Python prints them on stderr (``logging.lastResort``); a program that has,
gets them through its handlers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from safe_encoders.atomic import atomic_write, atomic_write_text, fsync_dir
from safe_encoders.errors import SafeEncodersError

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE = "state.json"
STATE_DIGEST = "state.json.sha256"
FORMAT_VERSION = 3
"""3: ``state.json.sha256`` written last; 2: no digest of ``state.json``; 1: one process, no digests."""
_COMPLETE = re.compile(r"step-(\d+)")


class TrainingCheckpointError(SafeEncodersError, ValueError):
    """A training checkpoint is damaged, or cannot be resumed by this launch."""


class ProcessCountError(TrainingCheckpointError):
    """A checkpoint was written by another number of processes than this launch has."""


# ---------------------------------------------------------------------------- seeds and RNG state


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (every device); call it before building the model, so that the LoRA
    factors are drawn from ``seed`` too (``accelerate.utils.set_seed``)."""
    from accelerate.utils import set_seed

    set_seed(seed)


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's torch (CPU and CUDA), numpy and python RNG states: tensors, and JSON for the rest."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    np_state = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.int64))
    py_version, py_state, py_gauss = random.getstate()
    meta = {"python": [py_version, list(py_state), py_gauss], "numpy": [np_state[0], *map(float, np_state[2:])]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
        if states:
            torch.cuda.set_rng_state_all(states)
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
    version, state, gauss = meta["python"]
    random.setstate((version, tuple(state), gauss))


# ---------------------------------------------------------------------------- optimizer state as files


def optimizer_to_files(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer ``state_dict`` as tensors (for safetensors) and JSON (param groups, scalar slots)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, slots in state["state"].items():
        for key, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for pid, slots in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(slots)
    return {"state": state, "param_groups": meta["param_groups"]}


# ---------------------------------------------------------------------------- listing


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Checkpoint folders of a run (named ``step-N`` and holding a ``state.json`` or its digest), oldest first.

    Leftovers of interrupted writes (``step-N.tmp``, ``step-N.old``, ``step-N.corrupt``) are not listed; a listed
    folder may still be damaged (:func:`read_checkpoint` tells).
    """
    root = Path(output_dir) / CHECKPOINTS
    found = [
        p
        for p in root.glob("step-*")
        if _COMPLETE.fullmatch(p.name) and ((p / STATE).is_file() or (p / STATE_DIGEST).is_file())
    ]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def remove_leftovers(output_dir: str | Path) -> list[Path]:
    """Delete what interrupted saves left (anything in ``checkpoints/`` but complete checkpoints and
    ``*.corrupt`` folders kept for inspection); returns what was removed."""
    root = Path(output_dir) / CHECKPOINTS
    keep = set(list_checkpoints(output_dir))
    removed = []
    for path in sorted(root.glob("*")) if root.is_dir() else []:
        if path in keep or path.name.endswith(".corrupt"):
            continue
        if _COMPLETE.fullmatch(path.name) or path.name.startswith("step-") or path.name.startswith("."):
            _write_step(f"remove leftover {path.name}", lambda p=path: _remove(p))
            removed.append(path)
    return removed


# ---------------------------------------------------------------------------- writing


def _write_step(name: str, action: Callable[[], object]) -> None:
    """Run one file-system change of a checkpoint write. Every change goes through here: one place to
    inject faults (tests fail or 'kill' the write at each step)."""
    action()


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def checkpoint_path(output_dir: str | Path, global_step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS / f"step-{global_step:08d}"


@dataclass(frozen=True)
class Processes:
    """Who takes part in a save: this process's rank, how many there are, and a barrier between them."""

    rank: int = 0
    world_size: int = 1
    barrier: Callable[[], object] = lambda: None


def save_checkpoint(
    output_dir: str | Path,
    state: dict[str, Any],
    *,
    adapters: Callable[[], dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    keep: int,
    processes: Processes = Processes(),
) -> Path:
    """Write the checkpoint of ``state["global_step"]`` (every process calls this; see the module docstring).

    ``adapters`` is called on the main process only. The newest ``keep`` complete checkpoints are kept.
    """
    final = checkpoint_path(output_dir, state["global_step"])
    tmp = final.with_name(final.name + ".tmp")
    main = processes.rank == 0
    if main:
        _write_step("clear an older temporary folder", lambda: _remove(tmp))
        _write_step("create the temporary folder", lambda: tmp.mkdir(parents=True))
    processes.barrier()
    rng_tensors, rng_meta = rng_state()
    rng_name = f"rng-{processes.rank}.safetensors"
    _write_step(f"write {rng_name}", lambda: _save_tensors(tmp / rng_name, rng_tensors, {"rng": json.dumps(rng_meta)}))
    processes.barrier()
    if main:
        _write_step("write adapters.safetensors", lambda: _save_tensors(tmp / "adapters.safetensors", adapters()))
        opt_tensors, opt_meta = optimizer_to_files(optimizer.state_dict())
        _write_step("write optimizer.safetensors", lambda: _save_tensors(tmp / "optimizer.safetensors", opt_tensors))
        names = ["adapters.safetensors", "optimizer.safetensors"]
        names += [f"rng-{r}.safetensors" for r in range(processes.world_size)]
        full = {
            **state,
            "format_version": FORMAT_VERSION,
            "world_size": processes.world_size,
            "optimizer": opt_meta,
            "scheduler": scheduler.state_dict(),
            "files": {name: _sha256(tmp / name) for name in names},
        }
        _write_step("write state.json", lambda: atomic_write_text(tmp / STATE, json.dumps(full)))
        _write_step(f"write {STATE_DIGEST}", lambda: atomic_write_text(tmp / STATE_DIGEST, _digest_line(tmp / STATE)))
        _write_step("flush the temporary folder", lambda: fsync_dir(tmp))
        old = final.with_name(final.name + ".old")
        if final.exists():  # the same step again (after a resume from an older checkpoint)
            _write_step("clear an older copy", lambda: _remove(old))
            _write_step("move the older copy aside", lambda: os.replace(final, old))
        _write_step("rename into place", lambda: os.replace(tmp, final))
        _write_step("flush the checkpoints folder", lambda: fsync_dir(final.parent))
        _write_step("remove the older copy", lambda: _remove(old))
        for stale in list_checkpoints(output_dir)[:-keep]:
            aside = stale.with_name(stale.name + ".old")
            _write_step(f"retire {stale.name}", lambda s=stale, a=aside: os.replace(s, a))
            _write_step(f"remove {stale.name}", lambda a=aside: _remove(a))
    processes.barrier()
    return final


# ---------------------------------------------------------------------------- reading


@dataclass
class Checkpoint:
    """A checkpoint read whole and checked, before anything of the run is changed."""

    path: Path
    state: dict[str, Any]
    adapters: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: tuple[dict[str, torch.Tensor], dict[str, Any]]

    @property
    def global_step(self) -> int:
        return int(self.state["global_step"])

    def apply(
        self,
        load_adapters: Callable[[dict[str, torch.Tensor]], None],
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
    ) -> None:
        """Load the adapters, optimizer, scheduler and this process's RNG state."""
        load_adapters(self.adapters)
        optimizer.load_state_dict(self.optimizer)
        scheduler.load_state_dict(self.state["scheduler"])
        set_rng_state(*self.rng)


def _digest_line(path: Path) -> str:
    """The content of a digest file: ``HEX  NAME`` (``sha256sum -c`` checks it)."""
    return f"{_sha256(path)}  {path.name}\n"


def _read_state(path: Path) -> dict[str, Any]:
    """The ``state.json`` of checkpoint ``path``, checked against its digest file and for its shape."""
    raw = (path / STATE).read_bytes()
    has_digest = (path / STATE_DIGEST).is_file()
    if has_digest:
        fields = (path / STATE_DIGEST).read_text().split()
        if len(fields) != 2 or fields[1] != STATE:
            raise TrainingCheckpointError(f"{path / STATE_DIGEST} is not a digest line of {STATE}")
        if hashlib.sha256(raw).hexdigest() != fields[0]:
            raise TrainingCheckpointError(f"{path / STATE} is not the file {STATE_DIGEST} was written for")
    state = json.loads(raw)
    if not isinstance(state, dict):
        raise TrainingCheckpointError(f"{path / STATE} holds a JSON {type(state).__name__}, not a checkpoint state")
    version = state.get("format_version", 1)
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise TrainingCheckpointError(f"{path / STATE}: unknown format_version {version!r}")
    if version >= 3 and not has_digest:
        raise TrainingCheckpointError(f"{path} has no {STATE_DIGEST} (written last): the checkpoint is incomplete")
    files = state.get("files")
    if files is not None and not (
        isinstance(files, dict)
        and all(isinstance(d, str) and isinstance(n, str) and Path(n).name == n for n, d in files.items())
    ):
        raise TrainingCheckpointError(f"{path / STATE}: 'files' is not a map of file names to digests")
    required = ["global_step", "scheduler", "optimizer", *(["world_size"] if files is not None else [])]
    bad = [k for k in required if k not in state]
    bad += [k for k, kind in _STATE_FIELDS.items() if k in state and not isinstance(state[k], kind)]
    if bad:
        raise TrainingCheckpointError(f"{path / STATE}: missing or malformed field(s) {bad}")
    return state


_STATE_FIELDS: dict[str, type] = {"global_step": int, "world_size": int, "scheduler": dict, "optimizer": dict}
"""The fields of ``state.json`` that :func:`read_checkpoint` reads itself, with their JSON types."""


def _rng_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads((handle.metadata() or {})["rng"])
    return load_file(str(path)), meta


def read_checkpoint(path: str | Path, rank: int = 0, world_size: int = 1) -> Checkpoint:
    """Read and check a checkpoint for process ``rank`` of ``world_size``; TrainingCheckpointError if it is
    damaged (a file missing, unreadable, or not the one ``state.json`` was written with) or was written by
    another number of processes."""
    path = Path(path)
    try:
        state = _read_state(path)
        files = state.get("files")
        if files is None:  # format 1: one process, rng.safetensors, rng state in state.json, no digests
            tensors, meta = load_file(str(path / "rng.safetensors")), state["rng"]
            saved_world = 1
        else:
            for name, digest in files.items():
                if _sha256(path / name) != digest:
                    raise TrainingCheckpointError(f"{path / name} is not the file {STATE} was written with")
            saved_world = int(state["world_size"])
        if saved_world == world_size and files is not None:
            tensors, meta = _rng_file(path / f"rng-{rank}.safetensors")
        adapters = load_file(str(path / "adapters.safetensors"))
        optimizer = optimizer_from_files(load_file(str(path / "optimizer.safetensors")), state["optimizer"])
    except TrainingCheckpointError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SafetensorError) as error:
        raise TrainingCheckpointError(f"{path} cannot be read ({type(error).__name__}: {error})") from error
    if saved_world != world_size:
        raise ProcessCountError(
            f"{path} was written by {saved_world} process(es) and this launch has {world_size}; a run resumes "
            f"exactly only with the same number: launch it with --num_processes {saved_world}"
        )
    return Checkpoint(path, state, adapters, optimizer, (tensors, meta))


def find_resume_checkpoint(output_dir: str | Path, rank: int = 0, world_size: int = 1) -> Checkpoint | None:
    """The newest checkpoint of the run that reads back whole (None if there is none).

    Damaged newer ones are skipped with a warning (every process decides alike: all read every digest);
    call :func:`set_aside_newer` on the main process once every process has chosen.
    """
    for path in reversed(list_checkpoints(output_dir)):
        try:
            return read_checkpoint(path, rank, world_size)
        except ProcessCountError:
            raise
        except TrainingCheckpointError as error:
            if rank == 0:
                logger.warning("checkpoint %s is damaged (%s); falling back to the previous one", path.name, error)
    return None


def set_aside_newer(output_dir: str | Path, chosen: Checkpoint | None) -> list[Path]:
    """Rename the checkpoints newer than ``chosen`` (damaged ones) to ``step-N.corrupt`` and remove the
    leftovers of interrupted saves; returns the folders set aside. Main process only."""
    step = chosen.global_step if chosen is not None else -1
    aside = []
    for path in list_checkpoints(output_dir):
        if int(path.name.split("-")[1]) > step:
            target = path.with_name(path.name + ".corrupt")
            _remove(target)
            os.replace(path, target)
            aside.append(target)
    remove_leftovers(output_dir)
    return aside
