"""``eval quality``: FID and CLIP score of conditions on a caption set (Safe-CLIP Table 14)."""

from __future__ import annotations

import argparse
from pathlib import Path

from eval.errors import EvalError
from eval.options import add_generation_options, comma_list, generation_kwargs
from eval.quality.metrics import DEFAULT_CLIP_SCORE_MODEL, default_stats_cache
from safe_encoders.cli import Command
from safe_encoders.cli.types import positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_generation_options(p, default_conditions="sd,sd+safe,sld-strong")
    p.add_argument("--captions", required=True, help="caption file: COCO-30k's coco_30k.csv, or any CSV / TXT")
    p.add_argument("--caption-column", default=None, help="the caption column (default: prompt, text, caption...)")
    p.add_argument("--real", type=Path, default=None, help="folder of real images for FID (e.g. COCO val2017)")
    p.add_argument(
        "--metrics",
        default="fid,clip",
        help="comma-separated: fid, clip (the CLIP score); e.g. 'clip' without real images",
    )
    p.add_argument(
        "--clip-model", default=DEFAULT_CLIP_SCORE_MODEL, help="CLIP model of the CLIP score: Hub id or local folder"
    )
    p.add_argument("--fid-weights", default=None, help="local copy of torch-fidelity's Inception v3 weights")
    p.add_argument("--fid-size", type=positive_int, default=299, help="both FID sides are resized to this (299)")
    p.add_argument(
        "--no-center-crop", action="store_true", help="resize real images without cropping them square first"
    )
    p.add_argument("--stats-cache", type=Path, default=None, help=f"real-statistics cache ({default_stats_cache()})")
    p.add_argument(
        "--metrics-batch-size", type=positive_int, default=50, help="images per metric forward pass (default 50)"
    )


def run(args: argparse.Namespace) -> int:
    from eval.quality.metrics import FIDSettings
    from eval.quality.run import QualityConfig, run_quality

    metrics = comma_list(args.metrics)
    unknown = sorted(set(metrics) - {"fid", "clip"})
    if unknown or not metrics:
        raise EvalError(f"--metrics {args.metrics!r}: choose among fid, clip (unknown: {unknown})")
    cfg = QualityConfig(
        **generation_kwargs(args),
        captions=args.captions,
        caption_column=args.caption_column,
        real=args.real,
        fid="fid" in metrics,
        clip_model=args.clip_model if "clip" in metrics else None,
        fid_weights=args.fid_weights,
        fid_settings=FIDSettings(
            image_size=args.fid_size, center_crop=not args.no_center_crop, batch_size=args.metrics_batch_size
        ),
        stats_cache=args.stats_cache,
        metrics_batch_size=args.metrics_batch_size,
    )
    rows = run_quality(cfg, shard=args.shard)
    if rows is not None:
        print((Path(args.out) / "quality.md").read_text(encoding="utf-8"))
    return 0


COMMANDS = (
    Command(
        "quality",
        "FID and CLIP score of conditions on a caption set (Safe-CLIP Table 14)",
        "One image per caption under each condition (the t2i runner: resumable, shardable), then FID against --real "
        "and the CLIP score per condition; writes quality.{csv,md,tex}.",
        add_arguments,
        run,
    ),
)
