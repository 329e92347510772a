"""``eval vlm-bench``: LLaVA with the stock and the Safe-CLIP vision tower on lmms-eval tasks (MME, MMMU, AI2D,
POPE: the paper's Table 15), through lmms-eval's own ``llava_hf`` handling (model ``llava_hf_safe``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from eval.options import add_device_option, add_out_option
from safe_encoders.cli import Command
from safe_encoders.cli.types import comma_list, nonnegative_int, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    from eval.vlm_bench.run import CONDITIONS, DEFAULT_TASKS

    p.add_argument(
        "--model",
        default="llava-hf/llava-1.5-7b-hf",
        help="llava-hf LLaVA 1.5 / 1.6 checkpoint, Hub id or folder (default llava-hf/llava-1.5-7b-hf)",
    )
    p.add_argument(
        "--safe-checkpoint", default="auto", help="the tower of llava+safe: anything safe_encoders.make_safe accepts"
    )
    p.add_argument("--safe-revision", default=None, help="Hub revision of --safe-checkpoint")
    p.add_argument(
        "--tasks",
        default=",".join(DEFAULT_TASKS),
        help=f"lmms-eval tasks, comma-separated (default {','.join(DEFAULT_TASKS)})",
    )
    p.add_argument(
        "--conditions",
        default=",".join(CONDITIONS),
        help=f"rows of the table, comma-separated, among {', '.join(CONDITIONS)} (default: both)",
    )
    p.add_argument(
        "--include-path",
        action="append",
        type=Path,
        default=[],
        help="folder of extra lmms-eval task YAMLs (repeatable; lmms-eval's --include_path)",
    )
    p.add_argument("--limit", type=positive_int, default=None, help="first N samples of each task (a quick check)")
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "float16", "bfloat16"],
        help="model precision (default: float16 on GPU, float32 on CPU)",
    )
    p.add_argument(
        "--bootstrap-iters",
        type=nonnegative_int,
        default=0,
        help="lmms-eval's bootstrap iterations for standard errors (default 0: none)",
    )
    p.add_argument("--seed", type=nonnegative_int, default=0, help="lmms-eval's random seed (default 0)")
    add_device_option(p)
    add_out_option(p, help="output folder (vlm_bench.csv / .md / .tex, lmms_eval/; resumed if it holds a run)")


def run(args: argparse.Namespace) -> int:
    from eval.placement import default_device
    from eval.vlm_bench.run import VLMBenchConfig, run_vlm_bench

    device = default_device(args.device)
    cfg = VLMBenchConfig(
        out=args.out,
        model=args.model,
        safe_checkpoint=args.safe_checkpoint,
        safe_revision=args.safe_revision,
        tasks=tuple(comma_list(args.tasks)),
        conditions=tuple(comma_list(args.conditions)),
        include_path=tuple(args.include_path),
        limit=args.limit,
        device=str(device),
        dtype=args.dtype or ("float16" if device.type == "cuda" else "float32"),
        bootstrap_iters=args.bootstrap_iters,
        seed=args.seed,
    )
    run_vlm_bench(cfg)
    print((args.out / "vlm_bench.md").read_text(encoding="utf-8"))
    return 0


COMMANDS = (
    Command(
        "vlm-bench",
        "LLaVA with and without the Safe-CLIP tower on lmms-eval tasks (paper Table 15)",
        "Runs lmms-eval's tasks (default mme, mmmu_val, ai2d, pope) for LLaVA with its stock tower (llava) and with "
        "the Safe-CLIP tower (llava+safe), both through lmms-eval's own llava_hf model (llava_hf_safe), one "
        "(task, condition) pair at a time (resumed after an interruption); writes vlm_bench.{csv,md,tex} with both "
        "rows and their difference, and keeps lmms-eval's result and sample files under lmms_eval/. Needs "
        "pip install -e '.[vlm-bench]' and pip install --no-deps lmms-eval==0.7.3.",
        add_arguments,
        run,
    ),
)
