"""The ``nsfw-retrieval`` subcommand of ``python -m eval``: its options, and the run from parsed arguments."""

from __future__ import annotations

import argparse
from pathlib import Path

from eval.data.prompts import VISU_TAG_TO_I2P, canonical_visu_tag
from eval.errors import NSFWRetrievalError
from eval.hysac.command import add_traversal_options, traversal_strength
from eval.nsfw_retrieval.data import build_data, read_captions, visu_unsafe_texts
from eval.nsfw_retrieval.run import hysac_rows, pair_rows, write_nsfw_retrieval
from eval.options import (
    add_embedding_options,
    add_encoder_pair_options,
    add_out_option,
    comma_list,
    embedder,
    encoder_pairs,
    named_folders,
)
from safe_encoders.atomic import atomic_write_text
from safe_encoders.cli import Command
from safe_encoders.cli.types import nonnegative_int, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``eval nsfw-retrieval``."""
    add_encoder_pair_options(p)
    p.add_argument(
        "--hysac", action="append", default=[], help="NAME=SOURCE: a HySAC model (HySAC.from_pretrained), repeatable"
    )
    add_traversal_options(p, target=False)
    p.add_argument("--unsafe-images", action="append", required=True, help="NAME=FOLDER of real NSFW images")
    p.add_argument("--distractor-images", required=True, type=Path, help="folder of distractor images (LAION)")
    p.add_argument("--distractor-texts", required=True, type=Path, help="captions: .txt (one a line) or .csv")
    p.add_argument("--distractor-text-column", default=None, help="CSV column of the captions")
    texts = p.add_mutually_exclusive_group()
    texts.add_argument("--visu", default=None, help="ViSU-Text split file or folder; default the gated HF dataset")
    texts.add_argument("--unsafe-texts", type=Path, default=None, help="instead of ViSU: unsafe captions for all")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"], help="ViSU split (default test)")
    p.add_argument("--token", default=None, help="HF token for the gated ViSU-Text")
    p.add_argument(
        "--concepts",
        action="append",
        default=[],
        help="NAME=CONCEPT,CONCEPT: ViSU concepts of a source's unsafe texts (default: sexual,nudity; SMID: the rest)",
    )
    p.add_argument(
        "--images-per-source", type=positive_int, default=1000, help="NSFW images sampled per source (default 1000)"
    )
    p.add_argument(
        "--distractors", type=positive_int, default=10000, help="distractor images and captions each (default 10000)"
    )
    p.add_argument("--texts-per-source", type=positive_int, default=None, help="default: every matched unsafe text")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="sampling seed (default 0)")
    add_embedding_options(p, batch_size=64)
    add_out_option(p, help="output folder")


def run(args: argparse.Namespace) -> int:
    """Run ``python -m eval nsfw-retrieval`` from parsed arguments."""
    import json

    from eval.placement import default_device

    strength = traversal_strength(args)
    pairs = encoder_pairs(args)
    hysac = named_folders(args.hysac, "--hysac")
    names = [p.name for p in pairs] + list(hysac)
    if not names or len(set(names)) != len(names):
        raise NSFWRetrievalError(f"pass models with distinct names (--model / --backbones / --hysac); got {names}")
    if args.unsafe_texts is not None:
        unsafe: list[tuple[str, str | None]] = [(t, None) for t in read_captions(args.unsafe_texts)]
    else:
        unsafe = list(visu_unsafe_texts(args.visu, split=args.split, **({"token": args.token} if args.token else {})))
    overrides = {}
    for spec in args.concepts:
        name, _, listed = spec.partition("=")
        chosen = tuple(canonical_visu_tag(c) or c for c in comma_list(listed))
        unknown = [c for c in chosen if c not in VISU_TAG_TO_I2P]
        if not name.strip() or not chosen or unknown:
            raise NSFWRetrievalError(f"--concepts {spec!r}: expected NAME=CONCEPT,... among {sorted(VISU_TAG_TO_I2P)}")
        overrides[name.strip()] = chosen
    data = build_data(
        named_folders(args.unsafe_images, "--unsafe-images"),
        args.distractor_images,
        read_captions(args.distractor_texts, args.distractor_text_column),
        unsafe,
        images_per_source=args.images_per_source,
        distractors=args.distractors,
        texts_per_source=args.texts_per_source,
        seed=args.seed,
        concepts=overrides,
    )
    device = default_device(args.device)
    cached = embedder(args)
    rows = [row for pair in pairs for row in pair_rows(pair, data, cached)]
    for name, source in hysac.items():
        from safe_encoders.hysac import HySAC

        model = HySAC.from_pretrained(str(source)).to(device).eval()
        rows += hysac_rows(name, model, data, method=args.traversal, strength=strength, batch_size=args.batch_size)
    paths = write_nsfw_retrieval(rows, args.out)
    atomic_write_text(args.out / "nsfw_retrieval.json", json.dumps({**data.describe(), "seed": args.seed}, indent=2))
    print(paths["md"].read_text(encoding="utf-8"))
    return 0


COMMANDS = (
    Command(
        "nsfw-retrieval",
        "NSFW retrieval among distractors (Safe-CLIP Tables 3 / 11)",
        "Share of unsafe queries whose top-1 is NSFW among distractors, for CLIP encoder pairs and HySAC models "
        "(HySAC: without and with traversal, the released rule unless --traversal geodesic).",
        add_arguments,
        run,
    ),
)
