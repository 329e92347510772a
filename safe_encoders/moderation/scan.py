"""`scan`: score every text and image of a collection with HySAC and write the verdicts as Parquet shards.

Output folder:

- `scan.json`: what made the scan (input, model, thresholds, curvature, dtype, library version);
  a resumed scan must match it, or it is refused.
- `part-<first>-<last>.parquet`: rows `position, id, modality, score, threshold, unsafe, error` and,
  with `embeddings=True`, `embedding` (the space components, float32). `score` is the root distance;
  an item that could not be read or gave a non-finite embedding has its reason in `error` and null
  `score` / `unsafe`: it is never "safe". Each shard is written atomically, so the shards on disk are
  the record of what is done: a scan killed at any point (kill -9 included) continues with the first
  position no shard holds, and every item is written exactly once.

Several processes (e.g. under `accelerate launch`) share one output folder: process `i` of `n` takes
the positions `p % n == i`. See `scale.py` for Ray Data.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..atomic import atomic_write, atomic_write_text
from ..errors import SafeEncodersError
from ..extras import require
from ..hysac import lorentz
from ..hysac.classify import embed_images, embed_texts
from .collection import InputSpec, Item, load_image, read_items, validate_input

if TYPE_CHECKING:
    from ..hysac.model import HySAC

logger = logging.getLogger("safe_encoders.moderation.scan")

SCAN_FORMAT = "safe-encoders-scan"
SCAN_VERSION = 1
MANIFEST = "scan.json"
# Fields of the manifest that decide what the rows mean; a resume must match them.
_IDENTITY = ("format", "version", "input", "model", "thresholds", "curvature", "dtype", "embeddings")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class ScanError(SafeEncodersError, ValueError):
    """A scan cannot start or continue as asked (e.g. the output folder holds a different scan)."""


@dataclass(frozen=True)
class ScanConfig:
    """How to scan.

    Args:
        thresholds: unsafe thresholds per modality; a missing modality takes the model's bound.
        batch_size: items per forward pass.
        shard_size: rows per output shard (the unit of resumption).
        embeddings: also write each embedding (needed by `search`).
        dtype: "fp32", "fp16" or "bf16" for the towers (distances are computed in float32).
        process_index, num_processes: this process takes the positions `p % num_processes == process_index`.
        progress: show a progress bar (items/s).
        model_name: how the model is named in the manifest (its source).
    """

    thresholds: dict[str, float] = field(default_factory=dict)
    batch_size: int = 32
    shard_size: int = 4096
    embeddings: bool = False
    dtype: str = "fp32"
    process_index: int = 0
    num_processes: int = 1
    progress: bool = True
    model_name: str = "unnamed"

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.shard_size < 1:
            raise ScanError(f"batch_size and shard_size must be >= 1, got {self.batch_size}, {self.shard_size}.")
        if self.dtype not in DTYPES:
            raise ScanError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}.")
        if not 0 <= self.process_index < self.num_processes:
            raise ScanError(f"process_index {self.process_index} is not in [0, {self.num_processes}).")


@dataclass(frozen=True)
class ScanSummary:
    """What one call of `scan` did: rows written now, by outcome, and the rows already there."""

    written: int
    unsafe: int
    errors: int
    skipped_done: int
    output: Path


def prepare_model(model: HySAC, *, device: str | torch.device | None = None, dtype: str = "fp32") -> HySAC:
    """Move `model` to `device` and its towers to `dtype` (curvature and scales stay float32), eval mode."""
    if device is not None:
        model.to(device)
    model.text.to(DTYPES[dtype])
    model.vision.to(DTYPES[dtype])
    return model.eval()


def resolve_thresholds(model: HySAC, given: dict[str, float]) -> dict[str, float | None]:
    """The threshold per modality: the given one, else the model's bound, else None (that modality is refused)."""
    thresholds: dict[str, float | None] = {}
    for modality in ("text", "image"):
        if modality in given:
            thresholds[modality] = float(given[modality])
        elif model.bounds is not None and model.bounds.has_threshold(modality):  # type: ignore[arg-type]
            thresholds[modality] = model.threshold(modality)  # type: ignore[arg-type]
        else:
            thresholds[modality] = None
    if all(value is None for value in thresholds.values()):
        raise ScanError("The model has no bounds, so there is no default threshold: pass --threshold.")
    return thresholds


@torch.no_grad()
def score_items(
    model: HySAC, items: Sequence[Item], thresholds: dict[str, float | None], *, embeddings: bool = False
) -> list[dict[str, Any]]:
    """One output row per item (same order): root distance, threshold, verdict, or the reason it failed."""
    rows = [_row(item, thresholds) for item in items]
    points: dict[int, torch.Tensor] = {}
    texts = [(i, item) for i, item in enumerate(items) if item.modality == "text" and rows[i]["error"] is None]
    if texts:
        encoded = embed_texts(model, [item.text for _, item in texts], batch_size=len(texts))
        points.update({i: encoded[n] for n, (i, _) in enumerate(texts)})
    images = []
    for i, item in enumerate(items):
        if item.modality == "image" and rows[i]["error"] is None:
            try:
                images.append((i, load_image(item.image)))
            except Exception as error:  # any decoder failure is a property of the item, recorded
                rows[i]["error"] = f"unreadable image: {type(error).__name__}: {error}"
    if images:
        points.update(_embed_images(model, images, rows))
    curvature = model.curvature.detach()
    for i, point in points.items():
        score = lorentz.root_distance(point.float(), curvature).item()
        if not (math.isfinite(score) and torch.isfinite(point).all()):
            rows[i]["error"] = "non-finite embedding"
            continue
        rows[i]["score"] = score
        rows[i]["unsafe"] = score > rows[i]["threshold"]
        if embeddings:
            rows[i]["embedding"] = point.float().cpu().tolist()
    return rows


def _row(item: Item, thresholds: dict[str, float | None]) -> dict[str, Any]:
    threshold = thresholds.get(item.modality)
    error = item.error
    if error is None and threshold is None:
        error = f"no {item.modality} threshold (the model's bounds have none; pass --threshold)"
    return dict(
        position=item.position, id=item.id, modality=item.modality, score=None, threshold=threshold,
        unsafe=None, error=error, embedding=None,
    )  # fmt: skip


def _embed_images(model: HySAC, images: list[tuple[int, Any]], rows: list[dict[str, Any]]) -> dict[int, torch.Tensor]:
    """Embed decoded images in one batch; if the processor refuses the batch, one by one to find the culprit."""
    processor = model.image_processor
    if processor is None:
        raise ScanError("The model has no image processor (preprocessor_config.json beside it); cannot scan images.")
    try:
        pixel_values = processor(images=[image for _, image in images], return_tensors="pt")["pixel_values"]
        encoded = embed_images(model, pixel_values=pixel_values, batch_size=len(images))
        return {i: encoded[n] for n, (i, _) in enumerate(images)}
    except (ValueError, TypeError, RuntimeError):
        if len(images) == 1:
            raise
    points = {}
    for i, image in images:
        try:
            points.update(_embed_images(model, [(i, image)], rows))
        except (ValueError, TypeError, RuntimeError) as error:
            rows[i]["error"] = f"image rejected by the processor: {type(error).__name__}: {error}"
    return points


# ---------------------------------------------------------------------------------------------- output


class ScanOutput:
    """An output folder: its manifest, its atomically written shards, and the positions they hold."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST

    def shards(self) -> list[Path]:
        return sorted(self.folder.glob("*.parquet"))

    def manifest(self) -> dict[str, Any] | None:
        return json.loads(self.manifest_path.read_text()) if self.manifest_path.exists() else None

    def claim(self, manifest: dict[str, Any]) -> None:
        """Write the manifest, or check that the one there describes the same scan."""
        existing = self.manifest()
        if existing is None:
            if self.shards():
                raise ScanError(f"{self.folder} holds Parquet files but no {MANIFEST}: not a scan folder; use another.")
            atomic_write_text(self.manifest_path, json.dumps(manifest, indent=2, sort_keys=True))
            return
        changed = [key for key in _IDENTITY if existing.get(key) != manifest.get(key)]
        if changed:
            details = "; ".join(f"{key}: {existing.get(key)!r} -> {manifest.get(key)!r}" for key in changed)
            raise ScanError(
                f"{self.folder} holds a different scan ({details}). Resume with the same settings, or use a new folder."
            )

    def done_positions(self) -> set[int]:
        pq = require("pyarrow.parquet", "scan", feature="Writing scan results")
        done: set[int] = set()
        for path in self.shards():
            done.update(pq.read_table(path, columns=["position"]).column("position").to_pylist())
        return done

    def write_shard(self, rows: list[dict[str, Any]], dim: int | None) -> Path:
        pq = require("pyarrow.parquet", "scan", feature="Writing scan results")
        table = rows_to_table(rows, dim)
        first, last = rows[0]["position"], rows[-1]["position"]
        path = self.folder / f"part-{first:012d}-{last:012d}.parquet"
        return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def rows_to_table(rows: list[dict[str, Any]], dim: int | None) -> Any:
    """The Arrow table of scan rows; `dim` set adds the `embedding` column (fixed-size float32 lists)."""
    pa = require("pyarrow", "scan", feature="Writing scan results")
    columns = {
        "position": pa.array([row["position"] for row in rows], pa.int64()),
        "id": pa.array([row["id"] for row in rows], pa.string()),
        "modality": pa.array([row["modality"] for row in rows], pa.string()),
        "score": pa.array([row["score"] for row in rows], pa.float32()),
        "threshold": pa.array([row["threshold"] for row in rows], pa.float32()),
        "unsafe": pa.array([row["unsafe"] for row in rows], pa.bool_()),
        "error": pa.array([row["error"] for row in rows], pa.string()),
    }
    if dim is not None:
        columns["embedding"] = pa.array([row["embedding"] for row in rows], pa.list_(pa.float32(), dim))
    return pa.table(columns)


def read_scan(folder: str | Path, columns: list[str] | None = None) -> Any:
    """All rows of a scan folder as one Arrow table (sorted by position)."""
    pq = require("pyarrow.parquet", "scan", feature="Reading scan results")
    shards = ScanOutput(folder).shards()
    if not shards:
        raise ScanError(f"{folder}: no scan shards (part-*.parquet) found.")
    import pyarrow as pa

    table = pa.concat_tables([pq.read_table(path, columns=columns) for path in shards])
    return table.sort_by("position") if "position" in table.column_names else table


# ---------------------------------------------------------------------------------------------- entry point


def scan_manifest(model: HySAC, spec: InputSpec, config: ScanConfig, thresholds: dict[str, float | None]) -> dict:
    from .. import __version__

    return {
        "format": SCAN_FORMAT,
        "version": SCAN_VERSION,
        "input": spec.to_dict(),
        "model": config.model_name,
        "thresholds": thresholds,
        "curvature": round(float(model.curvature.detach()), 7),
        "embed_dim": model.embed_dim,
        "dtype": config.dtype,
        "embeddings": config.embeddings,
        "library_version": __version__,
    }


def scan(model: HySAC, spec: InputSpec, output: str | Path, config: ScanConfig | None = None) -> ScanSummary:
    """Score every item of `spec` and write the verdicts to `output` (see the module docstring).

    Call again with the same arguments to resume an interrupted scan: positions already written are
    skipped without being read again.
    """
    config = config or ScanConfig()
    validate_input(spec)
    thresholds = resolve_thresholds(model, config.thresholds)
    store = ScanOutput(output)
    store.claim(scan_manifest(model, spec, config, thresholds))
    done = store.done_positions()
    mine = (
        item
        for item in read_items(spec)
        if item.position % config.num_processes == config.process_index and item.position not in done
    )
    dim = model.embed_dim if config.embeddings else None
    written = unsafe = errors = 0
    pending: list[dict[str, Any]] = []
    with _progress(config) as bar:
        for batch in _batches(mine, config.batch_size):
            rows = score_items(model, batch, thresholds, embeddings=config.embeddings)
            pending.extend(rows)
            unsafe += sum(bool(row["unsafe"]) for row in rows)
            errors += sum(row["error"] is not None for row in rows)
            bar.update(len(rows))
            if len(pending) >= config.shard_size:
                store.write_shard(pending, dim)
                written, pending = written + len(pending), []
        if pending:
            store.write_shard(pending, dim)
            written += len(pending)
    return ScanSummary(written, unsafe, errors, len(done), store.folder)


def _batches(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def _progress(config: ScanConfig) -> Any:
    from tqdm.auto import tqdm

    position = f" [process {config.process_index}/{config.num_processes}]" if config.num_processes > 1 else ""
    return tqdm(desc=f"scan{position}", unit=" items", disable=not config.progress, dynamic_ncols=True)
