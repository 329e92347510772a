"""``provenance.json``: what produced the results files of a ``python -m eval`` command, written beside them.

One writer for every command (``eval.__main__`` calls :func:`write_provenance` after a command succeeds): the
versions of the package and the libraries that shape the numbers, each model with its file digests (a local file
or folder) or its cached Hub revision, the sha256 of every prompt / caption / attack file, the classifiers'
versions and thresholds, the seeds, the images per prompt and the device. Which option means what is an
allow-list (:data:`MODEL_OPTIONS`, :data:`DATA_OPTIONS`, ...): an option not listed is still recorded with its
value under ``arguments`` (except secrets such as ``--token``), never digested by guess.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from safe_encoders.atomic import atomic_write_text

PROVENANCE_FILE = "provenance.json"
FORMAT_VERSION = 1

#: Distributions whose versions shape the numbers (absent ones are recorded as None).
LIBRARIES: tuple[str, ...] = (
    "safe-encoders",
    "torch",
    "transformers",
    "diffusers",
    "accelerate",
    "huggingface-hub",
    "safetensors",
    "peft",
    "numpy",
    "pillow",
    "nudenet",
    "onnxruntime",
    "torchmetrics",
    "torch-fidelity",
    "clip-benchmark",
    "lmms-eval",
)

#: Options naming models (Hub ids, folders, files; possibly ``NAME=SOURCE`` or ``LABEL:SOURCE``).
MODEL_OPTIONS: tuple[str, ...] = (
    "model",
    "safe_checkpoint",
    "unet",
    "processor",
    "hysac",
    "judge",
    "q16_model",
    "clip_model",
    "fid_weights",
)
#: Options naming data: a file's bytes are digested (prompt, caption, attack, text files), a folder's files counted.
DATA_OPTIONS: tuple[str, ...] = (
    "prompts",
    "captions",
    "attack_set",
    "q16_prompts",
    "visu",
    "unsafe_texts",
    "distractor_texts",
    "dataset",
    "images",
    "real",
    "unsafe_images",
    "distractor_images",
    "folder",
    "templates",
    "include_path",
)
#: Options holding secrets: never written.
SECRET_OPTIONS: frozenset[str] = frozenset({"token"})
#: File names inside a model folder whose bytes are digested (weights, configs, tokenizers).
MODEL_FILE_SUFFIXES: tuple[str, ...] = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".json", ".txt", ".model")


def library_versions(names: Iterable[str] = LIBRARIES) -> dict[str, str | None]:
    """The installed version of each distribution, None where it is not installed."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hub_revision(repo_id: str) -> str | None:
    """The commit the local Hugging Face cache resolves ``repo_id``'s main branch to (None if not cached)."""
    from huggingface_hub import constants

    ref = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs" / "main"
    try:
        return ref.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def _candidates(value: str) -> list[str]:
    """``value`` and what follows a ``NAME=`` or ``LABEL:`` prefix (the spec forms of model and data options)."""
    out = [value]
    for sep in ("=", ":"):
        head, found, tail = value.partition(sep)
        if found and tail and "/" not in head:
            out.append(tail)
    return out


def source_record(value: str, *, model: bool) -> dict[str, Any]:
    """What ``value`` names: a file (its sha256), a folder (a model's: the sha256 of its weight / config files;
    data: its file count) or, failing both, a Hub id (its cached revision, if any)."""
    for candidate in _candidates(value):
        path = Path(candidate).expanduser()
        if path.is_file():
            return {"value": value, "kind": "file", "path": str(path.resolve()), "sha256": file_sha256(path)}
        if path.is_dir():
            record: dict[str, Any] = {"value": value, "kind": "folder", "path": str(path.resolve())}
            if model:
                files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in MODEL_FILE_SUFFIXES)
                record["sha256"] = {p.relative_to(path).as_posix(): file_sha256(p) for p in files}
            else:
                record["files"] = sum(1 for p in path.rglob("*") if p.is_file())
            return record
    name = _candidates(value)[-1]
    return {"value": value, "kind": "hub" if model else "name", "revision": hub_revision(name) if model else None}


def _values(raw: Any) -> list[str]:
    if raw is None or raw is False:
        return []
    if isinstance(raw, (list, tuple)):
        return [str(v) for v in raw if v is not None]
    return [str(raw)]


def _json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def device_record(name: str | None) -> dict[str, Any]:
    """The device the command ran on (its default when ``--device`` was not given) and, on a GPU, its name."""
    import torch

    device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    record: dict[str, Any] = {"device": str(device)}
    if device.type == "cuda" and torch.cuda.is_available():
        record["name"] = torch.cuda.get_device_name(device)
        record["cuda"] = torch.version.cuda
    return record


def classifier_record(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The classifiers' settings (thresholds, labels, models) among ``arguments``, with their libraries' versions."""
    from eval.classifiers import registered_options

    dests = [o.dest for o in registered_options()]
    settings = {d: _json_safe(arguments[d]) for d in dests if d in arguments}
    if not settings:
        return {}
    for d in ("rule", "classify_batch_size"):
        if d in arguments:
            settings[d] = _json_safe(arguments[d])
    return {"settings": settings, "versions": library_versions(("nudenet", "onnxruntime", "transformers"))}


def swap_records(out: str | os.PathLike) -> dict[str, Any]:
    """What the runs stored in ``out`` (and its sub-folders' stores) really swapped in: checkpoint, digest, base
    model per component, as recorded by the run when it loaded the safe encoder (``safe_swap:*`` store entries)."""
    from eval.store.results import DB_NAME, ResultsStore

    out = Path(out)
    records: dict[str, Any] = {}
    for db in sorted([out / DB_NAME, *out.glob(f"*/{DB_NAME}")]):
        if not db.is_file():
            continue
        with ResultsStore(db.parent) as store:
            for key in store.meta_keys("safe_swap:"):
                records[f"{db.parent.relative_to(out).as_posix()}:{key}"] = store.get_meta(key)
    return records


def provenance(args: argparse.Namespace | Mapping[str, Any], *, command: str | None = None) -> dict[str, Any]:
    """The provenance record of one run of a command whose parsed options are ``args``."""
    arguments = dict(vars(args) if isinstance(args, argparse.Namespace) else args)
    arguments = {k: v for k, v in arguments.items() if not k.startswith("_") and k not in SECRET_OPTIONS}
    models = {k: [source_record(v, model=True) for v in _values(arguments.get(k))] for k in MODEL_OPTIONS}
    data = {k: [source_record(v, model=False) for v in _values(arguments.get(k))] for k in DATA_OPTIONS}
    return {
        "format": FORMAT_VERSION,
        "command": command or arguments.get("command"),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "libraries": library_versions(),
        "models": {k: v for k, v in models.items() if v},
        "data": {k: v for k, v in data.items() if v},
        "classifiers": classifier_record(arguments),
        "seeds": {k: _json_safe(v) for k, v in arguments.items() if "seed" in k},
        "images_per_prompt": arguments.get("images_per_prompt"),
        "device": device_record(arguments.get("device")),
        "arguments": _json_safe(arguments),
    }


def git_revision() -> str | None:
    """The git commit of the checkout ``eval`` runs from (None outside a git checkout)."""
    import subprocess

    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def write_provenance(
    out: str | os.PathLike, args: argparse.Namespace | Mapping[str, Any], *, command: str | None = None
) -> Path:
    """Write ``out/provenance.json`` (atomically) for a run of ``command`` with options ``args``."""
    record = provenance(args, command=command)
    record["git"] = git_revision()
    record["safe_swaps"] = _json_safe(swap_records(out))
    return atomic_write_text(Path(out) / PROVENANCE_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")
