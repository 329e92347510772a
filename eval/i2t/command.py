"""Command lines of the image-to-text evaluation: ``python -m eval i2t`` and ``python -m eval i2t-judge``."""

from __future__ import annotations

import argparse

from eval.errors import EvalError
from eval.i2t.judges import DEFAULT_JUDGES, DEFAULT_NSFW_MODEL, DEFAULT_TOXICITY_MODEL
from eval.i2t.run import (
    DEFAULT_PROMPT,
    I2T_CONDITIONS,
    STORE_KIND,
    I2TConfig,
    I2TError,
    I2TRunner,
    judge_specs,
    spec_text,
)
from eval.options import (
    add_device_option,
    add_out_option,
    add_placement_options,
    add_progress_option,
    named_folders,
)
from safe_encoders.cli import Command
from safe_encoders.cli.types import nonnegative_float, nonnegative_int, positive_int


def _judge_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("judges")
    g.add_argument(
        "--judge",
        action="append",
        default=[],
        metavar="KIND[:MODEL]",
        help=f"replace the default judge of a kind or add one: toxicity[:MODEL] (default {DEFAULT_TOXICITY_MODEL}), "
        f"nsfw[:MODEL] (default {DEFAULT_NSFW_MODEL}), llm:MODEL (a local instruct LLM with a fixed rubric)",
    )
    g.add_argument("--nsfw-label", default="nsfw", help="the NSFW classifier's label that means NSFW")
    g.add_argument("--judge-batch-size", type=positive_int, default=16, help="texts per judge call (default 16)")
    g.add_argument("--label", default=None, help="the model's name in the report (default: from --model)")
    g.add_argument("--no-reference", action="store_true", help="omit the paper's Table 13 rows")
    add_progress_option(g)


def add_i2t_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="LLaVA 1.5 / 1.6 (transformers): Hub id or local folder")
    p.add_argument(
        "--images", action="append", required=True, metavar="NAME=FOLDER", help="an image source (repeatable)"
    )
    p.add_argument("--conditions", default=",".join(I2T_CONDITIONS), help=f"from {', '.join(I2T_CONDITIONS)}")
    p.add_argument("--safe-checkpoint", default="auto", help="anything safe_encoders.make_safe accepts")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="the instruction (the paper's: 'describe the image')")
    p.add_argument("--max-new-tokens", type=positive_int, default=256, help="tokens per description (default 256)")
    p.add_argument(
        "--temperature", type=nonnegative_float, default=0.0, help="0: greedy (default); >0: sampling, seeded"
    )
    p.add_argument("--seed", type=nonnegative_int, default=0, help="sampling seed (with the image id; default 0)")
    p.add_argument("--batch-size", type=positive_int, default=4, help="images per generate call (default 4)")
    p.add_argument("--limit", type=positive_int, default=None, help="first N images of each source only")
    add_placement_options(p)
    add_out_option(p)
    _judge_options(p)


def add_i2t_judge_arguments(j: argparse.ArgumentParser) -> None:
    add_out_option(j, help="the folder of an `eval i2t` run")
    j.add_argument(
        "--reclassify", default=None, help="comma-separated judges whose labels are dropped first ('all': every one)"
    )
    add_device_option(j)
    _judge_options(j)


def run_i2t(args: argparse.Namespace) -> int:
    cfg = I2TConfig(
        model=args.model,
        images=named_folders(args.images, "--images"),
        out=args.out,
        conditions=[c for c in args.conditions.split(",") if c.strip()],
        safe_checkpoint=args.safe_checkpoint,
        prompt=args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
        batch_size=args.batch_size,
        limit=args.limit,
        judges=[spec_text(s) for s in judge_specs(DEFAULT_JUDGES, args.judge)],
        nsfw_label=args.nsfw_label,
        judge_batch_size=args.judge_batch_size,
        label=args.label,
        reference=not args.no_reference,
        dtype=args.dtype,
        device=args.device,
        progress=not args.no_progress,
    )
    rows = I2TRunner(cfg, shard=args.shard).run()
    if rows is not None:
        print((args.out / "i2t.md").read_text(encoding="utf-8"))
    return 0


def run_i2t_judge(args: argparse.Namespace) -> int:
    from eval.generation import classify_store
    from eval.i2t.judges import build_judges
    from eval.i2t.report import report_i2t
    from eval.i2t.run import checked_judges, clear_judges
    from eval.placement import default_device
    from eval.store.results import ResultsStore

    if not (args.out / "results.sqlite").is_file():
        raise EvalError(f"{args.out} holds no run (no results.sqlite)")
    store = ResultsStore(args.out)
    if store.get_meta("kind") != STORE_KIND:
        raise I2TError(f"{args.out} is not an i2t run; images are (re-)classified with `python -m eval classify`")
    meta = store.get_meta("i2t", {})
    specs = judge_specs(meta.get("judges") or DEFAULT_JUDGES, args.judge)
    names = [s.kind for s in specs]
    if args.reclassify:
        drop = names if args.reclassify.strip() == "all" else [n.strip() for n in args.reclassify.split(",")]
        clear_judges(store, [n for n in drop if n])
    label = args.label or meta.get("label") or "model"
    store.set_meta("i2t", {**meta, "label": label, "judges": [spec_text(s) for s in specs]})
    device = default_device(args.device)
    classify_store(
        store,
        lambda: checked_judges(
            store, build_judges(specs, device=device, batch_size=args.judge_batch_size, nsfw_label=args.nsfw_label)
        ),
        rule=names,
        batch_size=args.judge_batch_size,
        progress=not args.no_progress,
    )
    report_i2t(store, args.out, label, reference=not args.no_reference)
    print((args.out / "i2t.md").read_text(encoding="utf-8"))
    return 0


COMMANDS = (
    Command(
        "i2t",
        "LLaVA describes NSFW images, with and without Safe-CLIP (Tables 5 / 13)",
        "LLaVA describes image folders with its own and the Safe-CLIP tower; open judges score the descriptions "
        "(resolved before anything is generated); resumable, shardable.",
        add_i2t_arguments,
        run_i2t,
    ),
    Command(
        "i2t-judge",
        "(re-)judge the descriptions of an i2t run and rewrite its report",
        "(Re-)judge the stored descriptions of an `eval i2t` run without regenerating them; rewrite i2t.{csv,md,tex}.",
        add_i2t_judge_arguments,
        run_i2t_judge,
    ),
)
