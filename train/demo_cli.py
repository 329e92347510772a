"""The command line of the demo, ``python -m train demo``: its options (each with a help text) and its entry point.
Light to import: ``python -m train --help`` builds this parser without loading torch."""

from __future__ import annotations

import argparse

from safe_encoders.cli.types import nonnegative_int, positive_int
from train.demo_progress import DEMO_THREADS


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m train demo``."""
    parser.add_argument("--out", required=True, help="output folder (created; e.g. out/demo)")
    parser.add_argument(
        "--seed",
        type=nonnegative_int,
        default=0,
        help="seed of the synthetic world, the initial weights and the training order",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help=f"torch CPU threads (default {DEMO_THREADS}: the models are tiny; more threads spin on a busy machine)",
    )
    parser.add_argument("--quiet", action="store_true", help="print nothing; the results are still written to --out")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also show the training loop's progress bars and the libraries' own bars and warnings",
    )
    parser.add_argument(
        "--skip-hysac", action="store_true", help="only the Safe-CLIP part (HySAC is about half of the run)"
    )


def demo_main(args: argparse.Namespace) -> int:
    """Run the demo with the options of ``add_demo_arguments``."""
    from train.demo import run_demo
    from train.demo_world import DemoSettings

    settings = DemoSettings(seed=args.seed, threads=args.threads)
    run_demo(args.out, settings, progress=not args.quiet, hysac=not args.skip_hysac, verbose=args.verbose)
    return 0
