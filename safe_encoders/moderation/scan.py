"""`scan`: score every text and image of a collection with HySAC and write the verdicts as Parquet shards.

Output folder (readable as one table as it stands: `pyarrow.parquet.read_table(folder)`,
`pandas.read_parquet(folder)`, `datasets.load_dataset("parquet", data_dir=folder)`: they skip hidden
files and folders):

- `.scan.json`: what made the scan (input, model, thresholds, curvature, dtype, library version);
  a resumed scan must match it, or it is refused.
- `part-<first>-<last>.parquet`: rows `position, id, modality, score, threshold, unsafe, view, error`
  and, with `embeddings=True`, `embedding` (the space components, float32). `score` is the root
  distance, the highest over the item's views (`view` names the frame / background / text window that
  gave it; null when the item has one). An item that could not be read or gave a non-finite embedding
  has its reason in `error` and null `score` / `unsafe`: it is never "safe". Each shard is written
  atomically, so the shards on disk are the record of what is done: a scan killed at any point
  (kill -9 included) continues with the first position no shard holds, and every item is written once.
- `.lock-<i>-of-<n>`: held (flock) by the process scanning share `i` of `n`; a second scan of the folder
  is refused while it runs.

Several processes (e.g. under `accelerate launch`) share one output folder: process `i` of `n` takes
the positions `p % n == i`. See `scale.py` for Ray Data.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
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
from ..hysac.gate.core import text_windows
from .collection import InputSpec, Item, duplicate_positions, read_items, validate_input
from .views import MAX_FRAMES, image_views

if TYPE_CHECKING:
    from ..hysac.model import HySAC

logger = logging.getLogger("safe_encoders.moderation.scan")

SCAN_FORMAT = "safe-encoders-scan"
SCAN_VERSION = 2
# Hidden ("."): pyarrow, pandas and datasets skip it when they read the folder as a table.
MANIFEST = ".scan.json"
LEGACY_MANIFEST = "scan.json"
# Fields of the manifest that decide what the rows mean; a resume must match them.
_IDENTITY = (
    "format", "version", "input", "model", "thresholds", "curvature", "dtype", "embeddings", "max_frames", "dedupe"
)  # fmt: skip
DEDUPE_MODES = ("refuse", "first")
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
        workers: threads decoding images (and splitting texts) a few batches ahead of the model; 0: inline.
        model_name: how the model is named in the manifest (its source).
        max_frames: an image with more frames is an error row (every frame is scored, or none).
        dedupe: "refuse" (default: duplicate ids stop the scan before it starts, the first few listed)
            or "first" (the first item of each id and modality is scanned, later ones are left out).
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
    max_frames: int = MAX_FRAMES
    dedupe: str = "refuse"
    workers: int = 0

    def __post_init__(self) -> None:
        for modality, value in self.thresholds.items():
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise ScanError(f"The {modality} threshold must be a finite number, got {value!r}.")
        if self.workers < 0:
            raise ScanError(f"workers must be >= 0, got {self.workers}.")
        if self.max_frames < 1:
            raise ScanError(f"max_frames must be >= 1, got {self.max_frames}.")
        if self.dedupe not in DEDUPE_MODES:
            raise ScanError(f"dedupe must be one of {DEDUPE_MODES}, got {self.dedupe!r}.")
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
    duplicates_left_out: int = 0


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
    limit = lorentz.MAX_RADIUS / math.sqrt(float(model.curvature.detach()))  # the farthest expmap0 reaches
    for modality, value in thresholds.items():
        if value is not None and not (math.isfinite(value) and 0 <= value < limit):
            origin = "given" if modality in given else "the model's bound"
            raise ScanError(
                f"The {modality} threshold {value} ({origin}) is outside the model's range of root distances "
                f"[0, {limit:.6g}): no verdict could depend on it; pass a threshold inside that range."
            )
    return thresholds


@torch.no_grad()
def score_items(
    model: HySAC,
    items: Sequence[Item],
    thresholds: dict[str, float | None],
    *,
    embeddings: bool = False,
    max_frames: int = MAX_FRAMES,
    batch_size: int = 32,
    decoded: Sequence[list[tuple[str | None, Any]] | str] | None = None,
) -> list[dict[str, Any]]:
    """One output row per item (same order): root distance, threshold, verdict, or the reason it failed.

    An item is judged whole: a text by every window of tokens the tokenizer reads (the gate's
    `text_windows`), an image by every view (`views.image_views`: frames, alpha on white and on black).
    Its score is the highest, the `view` column names the view that gave it (null when there is one).
    `decoded`: `item_views` of each item, when decoding workers made them already.
    """
    rows = [_row(item, thresholds) for item in items]
    views: list[tuple[int, str | None, Any]] = []  # (row, label, text or RGB image)
    for i, item in enumerate(items):
        if rows[i]["error"] is not None:
            continue
        found = decoded[i] if decoded is not None else item_views(model, item, max_frames)
        if isinstance(found, str):
            rows[i]["error"] = found
        else:
            views.extend((i, label, view) for label, view in found)
    texts = [view for view in views if items[view[0]].modality == "text"]
    points: list[tuple[int, str | None, torch.Tensor]] = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        encoded = embed_texts(model, [text for _, _, text in chunk], batch_size=len(chunk))
        points.extend((i, label, encoded[n]) for n, (i, label, _) in enumerate(chunk))
    images = [view for view in views if items[view[0]].modality == "image"]
    for start in range(0, len(images), batch_size):
        points.extend(_embed_images(model, images[start : start + batch_size], rows))
    curvature = model.curvature.detach()
    best: dict[int, tuple[float, str | None, torch.Tensor]] = {}
    for i, label, point in points:
        if rows[i]["error"] is not None:
            continue
        score = lorentz.root_distance(point.float(), curvature).item()
        if not (math.isfinite(score) and torch.isfinite(point).all()):
            rows[i]["error"] = "non-finite embedding" + (f" ({label})" if label else "")
            continue
        if i not in best or score > best[i][0]:
            best[i] = (score, label, point)
    for i, (score, label, point) in best.items():
        if rows[i]["error"] is not None:
            continue
        rows[i].update(score=score, unsafe=score > rows[i]["threshold"], view=label)
        if embeddings:
            rows[i]["embedding"] = point.float().cpu().tolist()
    return rows


def item_views(model: HySAC, item: Item, max_frames: int = MAX_FRAMES) -> list[tuple[str | None, Any]] | str:
    """`(label, text window or RGB image)` per view of one item, or why it cannot be read (thread-safe: the
    decoding workers call it)."""
    if item.error is not None:
        return item.error
    if item.modality == "text":
        windows = text_windows(model.tokenizer, item.text)
        return [(f"window {n + 1}/{len(windows)}" if len(windows) > 1 else None, w) for n, w in enumerate(windows)]
    try:
        return [(view.label, view.image) for view in image_views(item.image, max_frames=max_frames)]
    except Exception as error:  # any decoder failure is a property of the item, recorded
        return f"unreadable image: {type(error).__name__}: {error}"


def _row(item: Item, thresholds: dict[str, float | None]) -> dict[str, Any]:
    threshold = thresholds.get(item.modality)
    error = item.error
    if error is None and threshold is None:
        error = f"no {item.modality} threshold (the model's bounds have none; pass --threshold)"
    return dict(
        position=item.position, id=item.id, modality=item.modality, score=None, threshold=threshold,
        unsafe=None, view=None, error=error, embedding=None,
    )  # fmt: skip


def _embed_images(
    model: HySAC, images: list[tuple[int, str | None, Any]], rows: list[dict[str, Any]]
) -> list[tuple[int, str | None, torch.Tensor]]:
    """Embed decoded views in one batch; if the processor refuses the batch, one by one to find the culprit."""
    processor = model.image_processor
    if processor is None:
        raise ScanError("The model has no image processor (preprocessor_config.json beside it); cannot scan images.")
    try:
        pixel_values = processor(images=[image for _, _, image in images], return_tensors="pt")["pixel_values"]
        encoded = embed_images(model, pixel_values=pixel_values, batch_size=len(images))
        return [(i, label, encoded[n]) for n, (i, label, _) in enumerate(images)]
    except (ValueError, TypeError, RuntimeError):
        if len(images) == 1:
            raise
    points = []
    for view in images:
        try:
            points.extend(_embed_images(model, [view], rows))
        except (ValueError, TypeError, RuntimeError) as error:
            rows[view[0]]["error"] = f"image rejected by the processor: {type(error).__name__}: {error}"
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
        return sorted(path for path in self.folder.glob("*.parquet") if not path.name.startswith(("_", ".")))

    def manifest(self) -> dict[str, Any] | None:
        if (self.folder / LEGACY_MANIFEST).exists() and not self.manifest_path.exists():
            raise ScanError(
                f"{self.folder} holds a scan of an older safe-encoders ({LEGACY_MANIFEST}); scan into a new folder."
            )
        return json.loads(self.manifest_path.read_text()) if self.manifest_path.exists() else None

    def read_shard(self, path: Path, columns: list[str] | None = None) -> Any:
        """One shard as an Arrow table; a damaged one (shards are written atomically: damage came from outside)
        is a one-line error naming the file and the fix."""
        pq = require("pyarrow.parquet", "scan", feature="Reading scan results")
        try:
            return pq.read_table(path, columns=columns)
        except Exception as error:  # pyarrow raises ArrowInvalid / OSError / ValueError for the same damage
            raise ScanError(
                f"{path}: damaged scan shard ({type(error).__name__}: {error}); delete it and run the same scan "
                "again (its items are scanned again)."
            ) from error

    @contextmanager
    def lock(self, config: ScanConfig) -> Iterator[None]:
        """Hold this process's share of the folder for the duration of a scan: a second scan of the same share,
        or one split into another number of processes, is refused while this one runs (it would write every
        item again)."""
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        share = f"{config.process_index}-of-{config.num_processes}"
        handle = open(self.folder / f".lock-{share}", "a+")  # noqa: SIM115 (held until the scan ends)
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                raise ScanError(
                    f"{self.folder}: another scan ({handle.read().strip() or 'process ' + share}) is writing to this "
                    "folder; wait for it to end (then run again to resume), or use another --out."
                ) from None
            for other in self.folder.glob(".lock-*-of-*"):
                if other.name.endswith(f"-of-{config.num_processes}"):
                    continue
                with open(other) as held:
                    try:
                        fcntl.flock(held, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    except BlockingIOError:
                        raise ScanError(
                            f"{self.folder}: a scan split into another number of processes ({held.read().strip()}) "
                            "is writing to this folder; wait for it to end, or use another --out."
                        ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}, process {share}, batch size {config.batch_size}, "
                         f"shard size {config.shard_size}")  # fmt: skip
            handle.flush()
            yield
        finally:
            handle.close()  # releases the lock

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
        done: set[int] = set()
        for path in self.shards():
            done.update(self.read_shard(path, columns=["position"]).column("position").to_pylist())
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
        "view": pa.array([row.get("view") for row in rows], pa.string()),
        "error": pa.array([row["error"] for row in rows], pa.string()),
    }
    if dim is not None:
        columns["embedding"] = pa.array([row["embedding"] for row in rows], pa.list_(pa.float32(), dim))
    return pa.table(columns)


def read_scan(folder: str | Path, columns: list[str] | None = None) -> Any:
    """All rows of a scan folder as one Arrow table (sorted by position)."""
    pa = require("pyarrow", "scan", feature="Reading scan results")
    output = ScanOutput(folder)
    shards = output.shards()
    if not shards:
        raise ScanError(f"{folder}: no scan shards (part-*.parquet) found.")
    table = pa.concat_tables([output.read_shard(path, columns=columns) for path in shards])
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
        "max_frames": config.max_frames,
        "dedupe": config.dedupe,
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
    with store.lock(config):
        left_out = duplicate_positions(spec, refuse=config.dedupe == "refuse")  # before anything is written
        store.claim(scan_manifest(model, spec, config, thresholds))
        done = store.done_positions()
        mine = (
            item
            for item in read_items(spec)
            if item.position % config.num_processes == config.process_index
            and item.position not in done
            and item.position not in left_out
        )
        dim = model.embed_dim if config.embeddings else None
        written = unsafe = errors = 0
        pending: list[dict[str, Any]] = []
        with _progress(config) as bar:
            for batch, decoded in _decoded(model, _batches(mine, config.batch_size), config):
                rows = score_items(model, batch, thresholds, embeddings=config.embeddings, decoded=decoded,
                                   max_frames=config.max_frames, batch_size=config.batch_size)  # fmt: skip
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
    return ScanSummary(written, unsafe, errors, len(done), store.folder, len(left_out))


def _batches(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def _decoded(
    model: HySAC, batches: Iterable[list[Item]], config: ScanConfig
) -> Iterator[tuple[list[Item], list[Any] | None]]:
    """`(batch, item_views per item)`, decoded by `config.workers` threads up to two batches ahead (inline: None)."""
    if config.workers == 0:
        yield from ((batch, None) for batch in batches)
        return
    with ThreadPoolExecutor(config.workers) as pool:
        ahead: deque[tuple[list[Item], list[Future]]] = deque()
        for batch in batches:
            ahead.append((batch, [pool.submit(item_views, model, item, config.max_frames) for item in batch]))
            if len(ahead) > 2:
                done, futures = ahead.popleft()
                yield done, [future.result() for future in futures]
        while ahead:
            done, futures = ahead.popleft()
            yield done, [future.result() for future in futures]


def _progress(config: ScanConfig) -> Any:
    from tqdm.auto import tqdm

    position = f" [process {config.process_index}/{config.num_processes}]" if config.num_processes > 1 else ""
    return tqdm(desc=f"scan{position}", unit=" items", disable=not config.progress, dynamic_ncols=True)
