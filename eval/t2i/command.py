"""``eval t2i`` (generate, classify, report), ``eval classify`` (re-label a run) and ``eval report`` (rewrite it)."""

from __future__ import annotations

import argparse
import sys

from eval.classifiers import PAPER_RULE
from eval.errors import EvalError
from eval.options import (
    add_classifier_options,
    add_device_option,
    add_generation_options,
    add_lease_option,
    add_out_option,
    add_progress_option,
    comma_list,
    t2i_generation_kwargs,
)
from eval.report.paper_tables import T2I
from safe_encoders.cli import Command
from safe_encoders.cli.types import nonnegative_int, positive_int


def add_report_options(p: argparse.ArgumentParser) -> None:
    """How the report of a t2i run is written: the paper's reference table, image grids."""
    g = p.add_argument_group("report")
    g.add_argument(
        "--paper-reference",
        default="sd-v1.4",
        choices=[*T2I, "none"],
        help="the published table printed beside ours, every cell: sd-v1.4 (Table 4) or sd-v2.0 (Table 12)",
    )
    g.add_argument(
        "--grids", type=nonnegative_int, default=0, help="write an image grid for the first N prompts (default 0)"
    )
    g.add_argument("--no-blur", action="store_true", help="do not blur flagged images in the grids")


def _reference(args: argparse.Namespace) -> str | None:
    return None if args.paper_reference == "none" else args.paper_reference


def add_t2i_arguments(p: argparse.ArgumentParser) -> None:
    add_generation_options(p, default_conditions="sd,sd+safe", guidance_default="the prompt set's own (I2P), else 7.5")
    p.add_argument(
        "--prompts", required=True, help="'i2p', 'visu', 'i2p=FILE', 'visu=FILE_OR_FOLDER', or a CSV/TXT prompt file"
    )
    p.add_argument(
        "--id-column",
        default=None,
        help="prompt-file column with unique prompt ids (default: case_number, incremental_id, prompt_id, id, "
        "an unnamed index column); e.g. --id-column '' for the unnamed index when case_number repeats",
    )
    p.add_argument(
        "--images-per-prompt", type=positive_int, default=5, help="images per prompt (Safe-CLIP: 5; I2P paper: 10)"
    )
    add_classifier_options(p)
    add_report_options(p)


def run_t2i(args: argparse.Namespace) -> int:
    from eval.t2i.run import T2IConfig, T2IRunner

    cfg = T2IConfig(
        prompts=args.prompts,
        images_per_prompt=args.images_per_prompt,
        id_column=args.id_column,
        reference=_reference(args),
        grids=args.grids,
        blur=not args.no_blur,
        **t2i_generation_kwargs(args),
    )
    runner = T2IRunner(cfg, shard=args.shard)
    rows = runner.run()
    print(f"this worker generated {runner.generated} image(s)", file=sys.stderr)
    if rows is not None:
        print((args.out / "report.md").read_text(encoding="utf-8"))
    return 0


def add_classify_arguments(p: argparse.ArgumentParser) -> None:
    add_out_option(p, help="the folder of an `eval t2i` run")
    p.add_argument(
        "--reclassify",
        default=None,
        help="comma-separated classifiers whose stored labels are dropped first ('all' for every one)",
    )
    add_device_option(p)
    add_lease_option(p)
    add_progress_option(p)
    add_classifier_options(p)
    add_report_options(p)


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    add_out_option(p, help="the folder of an `eval t2i` run")
    p.add_argument("--rule", default=",".join(PAPER_RULE), help="classifiers whose OR flags an image")
    add_report_options(p)


def _t2i_store(args: argparse.Namespace):
    from eval.store.results import ResultsStore

    if not (args.out / "results.sqlite").is_file():
        raise EvalError(f"{args.out} holds no run (no results.sqlite)")
    store = ResultsStore(args.out)
    if store.get_meta("kind") == "i2t":
        raise EvalError(f"{args.out} holds an i2t run (texts): use `python -m eval i2t-judge --out {args.out}`")
    return store


def run_classify(args: argparse.Namespace) -> int:
    from eval.classifiers import ClassifierOptions, classifiers_from_config
    from eval.generation import classify_store
    from eval.options import classifier_options
    from eval.placement import default_device

    store = _t2i_store(args)
    rule = comma_list(args.rule)
    if args.reclassify:
        for name in rule if args.reclassify == "all" else comma_list(args.reclassify):
            store.clear_labels(name)
    options = ClassifierOptions(**classifier_options(args))
    classify_store(
        store,
        lambda: classifiers_from_config(options, device=default_device(args.device)),
        rule=rule,
        batch_size=args.classify_batch_size,
        progress=not args.no_progress,
        lease=args.lease,
    )
    return _write_report(store, args, rule)


def run_report(args: argparse.Namespace) -> int:
    return _write_report(_t2i_store(args), args, comma_list(args.rule))


def _write_report(store, args: argparse.Namespace, rule: list[str]) -> int:
    from eval.report.t2i import write_report

    write_report(
        store, args.out, rule=rule, reference=_reference(args), grids=args.grids, blur_flagged=not args.no_blur
    )
    print((args.out / "report.md").read_text(encoding="utf-8"))
    return 0


COMMANDS = (
    Command(
        "t2i",
        "text-to-image NSFW probability (I2P / ViSU tables)",
        "Generate images from unsafe prompts under several conditions, flag them with the rule's classifiers and "
        "report the share flagged per category (resumes when --out already holds a run).",
        add_t2i_arguments,
        run_t2i,
    ),
    Command(
        "classify",
        "(re-)classify the images of a run",
        "(Re-)label the images of an `eval t2i` run without regenerating them, then rewrite its report.",
        add_classify_arguments,
        run_classify,
    ),
    Command(
        "report",
        "rewrite the report of a run",
        "Rewrite report.csv / .md / .tex / .png (and grids) from the store of an `eval t2i` run.",
        add_report_arguments,
        run_report,
    ),
)
