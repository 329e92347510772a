"""``eval retrieval``: Safe-CLIP Table 2 (T->V, V->T, T*->V+V*, V*->T+T*; R@1/10/20) for encoder pairs on ViSU."""

from __future__ import annotations

import argparse

from eval.errors import EvalError
from eval.options import (
    add_embedding_options,
    add_encoder_pair_options,
    add_out_option,
    add_visu_options,
    embedder,
    encoder_pairs,
    visu_source,
)
from safe_encoders.cli import Command
from safe_encoders.cli.types import positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_encoder_pair_options(p)
    add_visu_options(p)
    p.add_argument("--limit", type=positive_int, default=None, help="first N usable rows only")
    add_embedding_options(p, batch_size=64)
    p.add_argument("--no-reference", action="store_true", help="omit the paper's Table 2 rows")
    add_out_option(p, help="output folder")


def run(args: argparse.Namespace) -> int:
    from eval.retrieval.data import data_from_visu
    from eval.retrieval.run import run_retrieval, to_markdown

    pairs = encoder_pairs(args)
    if not pairs:
        raise EvalError("retrieval needs models: pass --model NAME=SOURCE (repeatable) and / or --backbones all")
    data = data_from_visu(visu_source(args))
    if args.limit is not None:
        data = data.head(args.limit)
    rows = run_retrieval(pairs, data, args.out, embedder=embedder(args), reference=not args.no_reference)
    print(to_markdown(rows, args.split))
    return 0


COMMANDS = (
    Command(
        "retrieval",
        "ViSU retrieval table (Safe-CLIP Table 2) for encoder pairs",
        "Safe-CLIP Table 2 (T->V, V->T, T*->V+V*, V*->T+T*; R@1/10/20) for encoder pairs on a ViSU split; writes "
        "retrieval.{csv,md,tex}.",
        add_arguments,
        run,
    ),
)
