"""`safe-encoders scan`: score a collection with HySAC, write Parquet shards, resume where it stopped."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from . import Command
from .types import nonnegative_float, nonnegative_int, positive_int

if TYPE_CHECKING:
    from ..moderation.collection import InputSpec
    from ..moderation.scan import ScanConfig, ScanSummary

DESCRIPTION = """\
Score every image and / or text of a collection with HySAC (distance from the root of the
hyperbolic space: the farther, the less safe) and write the verdicts as Parquet shards:
id, modality, score, threshold, unsafe, error (and the embedding with --embeddings).

Inputs: an image folder (recursive), a CSV / JSONL / Parquet table of image paths and / or texts,
a Hugging Face dataset (saved folder or Hub id, --streaming), or WebDataset .tar shards.
Unreadable items are recorded with the reason (error column) and never counted as safe.
Every frame of an animation / page of a TIFF is scored, an image with transparency on white and
on black, a long text window by window: the item's score is the highest (the view column names
where it came from). Duplicate ids are refused (or --dedupe first).

The same command resumes an interrupted scan (even after kill -9): shards are written atomically
and positions already written are skipped.

Engines:
  local (default)  one process; under 'accelerate launch -m safe_encoders scan ...' each process
                   takes its share of the input and all write to the same folder.
  ray              Ray Data (pip install 'safe-encoders[scale]'): Parquet in (needs --id-column),
                   Parquet out, one model actor per worker.

examples:
  safe-encoders scan photos/ --out scan_photos --embeddings
  safe-encoders scan captions.parquet --text-column caption --out scan_captions --threshold 1.2
  accelerate launch --num_processes 4 -m safe_encoders scan 'shards/*.tar' --out scan_laion --dtype fp16
  safe-encoders scan data/ --kind parquet --id-column key --image-column path --engine ray --workers 8 --out out/
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..moderation.collection import INPUT_KINDS
    from ..moderation.scan import DTYPES
    from ..moderation.views import MAX_FRAMES

    parser.add_argument("source", help="folder, .csv / .jsonl / .parquet file, .tar shard(s) or glob, or HF dataset")
    parser.add_argument("--out", "-o", required=True, help="output folder (created; reuse it to resume)")
    parser.add_argument("--model", default="hysac", help="HySAC checkpoint: folder, Hub id or 'hysac' (default)")
    group = parser.add_argument_group("input")
    group.add_argument("--kind", choices=list(INPUT_KINDS), help="input kind (default: guessed from SOURCE)")
    group.add_argument(
        "--image-column", help="column holding images or image paths (WebDataset: extensions, e.g. 'jpg;png')"
    )
    group.add_argument("--text-column", help="column (WebDataset: extension) holding texts")
    group.add_argument("--id-column", help="column holding unique ids (default: row number / sample key)")
    group.add_argument("--image-root", help="folder that relative image paths are relative to (default: the table's)")
    group.add_argument("--split", default="train", help="Hugging Face dataset split (default: train)")
    group.add_argument("--streaming", action="store_true", help="stream a Hugging Face dataset")
    group.add_argument(
        "--dedupe", choices=["refuse", "first"], default="refuse",
        help="duplicate ids: refuse the scan (default, the first few listed) or scan the first of each",
    )  # fmt: skip
    group = parser.add_argument_group("verdicts")
    group.add_argument(
        "--threshold", type=nonnegative_float, help="unsafe above this root distance, for texts and images"
    )
    group.add_argument("--text-threshold", type=nonnegative_float, help="for texts only (default: the model's S.up_95)")
    group.add_argument(
        "--image-threshold", type=nonnegative_float, help="for images only (default: the model's V.up_95)"
    )
    group.add_argument("--embeddings", action="store_true", help="also store embeddings (needed by 'search')")
    group.add_argument(
        "--max-frames", type=positive_int, default=MAX_FRAMES,
        help=f"an image with more frames is an error row (default: {MAX_FRAMES}; every frame is scored)",
    )  # fmt: skip
    group = parser.add_argument_group("run")
    group.add_argument("--batch-size", type=positive_int, default=32, help="items per forward pass (default: 32)")
    group.add_argument("--shard-size", type=positive_int, default=4096, help="rows per output shard (default: 4096)")
    group.add_argument(
        "--decode-workers",
        type=nonnegative_int,
        default=0,
        help="threads decoding images ahead of the model (default: 0)",
    )
    group.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="tower precision (default: fp32)")
    group.add_argument("--device", help="torch device (default: this process's GPU if any, else cpu)")
    group.add_argument("--engine", choices=list(ENGINES), default="local", help="local (default) or ray")
    group.add_argument("--workers", type=positive_int, default=1, help="ray: model actors (default: 1)")
    group.add_argument(
        "--gpus-per-worker", type=nonnegative_float, default=0.0, help="ray: GPUs per actor (default: 0)"
    )
    group.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..moderation.collection import InputSpec, validate_input
    from ..moderation.scan import ScanConfig

    spec = InputSpec(
        source=args.source, kind=args.kind, image_column=args.image_column, text_column=args.text_column,
        id_column=args.id_column, split=args.split, streaming=args.streaming, image_root=args.image_root,
    )  # fmt: skip
    thresholds = {}
    for modality in ("text", "image"):
        given = getattr(args, f"{modality}_threshold")
        value = given if given is not None else args.threshold
        if value is not None:
            thresholds[modality] = value
    config = ScanConfig(
        thresholds=thresholds, batch_size=args.batch_size, shard_size=args.shard_size, embeddings=args.embeddings,
        dtype=args.dtype, progress=not args.no_progress, model_name=args.model, max_frames=args.max_frames,
        dedupe=args.dedupe, workers=args.decode_workers,
    )  # fmt: skip
    validate_input(spec)
    summary = ENGINES[args.engine](args, spec, config)
    print(
        f"scanned {summary.written} items ({summary.unsafe} unsafe, {summary.errors} unreadable); "
        f"{summary.skipped_done} were already done"
        + (f"; {summary.duplicates_left_out} duplicate ids left out" if summary.duplicates_left_out else "")
        + f" -> {summary.output}"
    )
    return 0


def _local(args: argparse.Namespace, spec: InputSpec, config: ScanConfig) -> ScanSummary:
    """One process, or one of several under `accelerate launch` (each takes `p % n == rank`)."""
    import dataclasses

    from accelerate import PartialState

    from ..hysac import HySAC
    from ..moderation.scan import prepare_model, scan

    state = PartialState()
    index, count = process_share(state.process_index, state.num_processes, os.environ)
    config = dataclasses.replace(config, process_index=index, num_processes=count)
    config = dataclasses.replace(config, progress=config.progress and int(os.environ.get("LOCAL_RANK", "0")) == 0)
    model = prepare_model(HySAC.from_pretrained(args.model), device=args.device or state.device, dtype=args.dtype)
    return scan(model, spec, args.out, config)


def process_share(index: int, count: int, environ: Mapping[str, str]) -> tuple[int, int]:
    """(this process's index, number of processes): accelerate's view, or the launcher's `RANK` / `WORLD_SIZE`
    when they say more. (CPU processes started by `accelerate launch --multi_gpu` or `torchrun` each look like a
    single process to accelerate; taken at its word, every process would scan everything.)"""
    world = int(environ.get("WORLD_SIZE", "1"))
    if world > count:
        return int(environ["RANK"]), world
    return index, count


def _ray(args: argparse.Namespace, spec: InputSpec, config: ScanConfig) -> ScanSummary:
    from ..moderation.scale import RayOptions, scan_with_ray

    options = RayOptions(workers=args.workers, gpus_per_worker=args.gpus_per_worker, device=args.device)
    return scan_with_ray(args.model, spec, args.out, config, options)


ENGINES: dict[str, Callable[[argparse.Namespace, InputSpec, ScanConfig], ScanSummary]] = {"local": _local, "ray": _ray}

COMMAND = Command(
    "scan", "score a collection for unsafe content (Parquet out, resumable)", DESCRIPTION, add_arguments, run
)
