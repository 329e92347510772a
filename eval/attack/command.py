"""``eval attack``: attack success rate of adversarial prompt sets (Ring-A-Bell, MMA-Diffusion, UnlearnDiffAtk, P4D)."""

from __future__ import annotations

import argparse
from pathlib import Path

from eval.options import add_classifier_options, add_generation_options, classifier_options, generation_kwargs
from safe_encoders.cli import Command
from safe_encoders.cli.types import positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    from eval.attack.sets import ATTACK_PRESETS, CONCEPT_RULES

    add_generation_options(p, default_conditions="sd,sd+safe")
    p.add_argument(
        "--attack-set",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help=f"repeatable; NAME a preset ({', '.join(ATTACK_PRESETS)}) or NAME:CONCEPT=PATH for any set "
        f"(CONCEPT in {', '.join(CONCEPT_RULES)})",
    )
    p.add_argument("--prompt-column", default=None, help="prompt column (default: the preset's / the usual ones)")
    p.add_argument("--id-column", default=None, help="id column; repeated ids are numbered 17, 17#2, ...")
    p.add_argument("--seed-column", default=None, help="per-prompt seed column (default: evaluation_seed, seed...)")
    p.add_argument("--guidance-column", default=None, help="per-prompt guidance column")
    p.add_argument("--images-per-prompt", type=positive_int, default=1, help="images per prompt (default 1)")
    add_classifier_options(p)
    # Each set is judged by its concept's rule; --rule overrides it for every set of the command.
    p.set_defaults(rule="")


def run(args: argparse.Namespace) -> int:
    from eval.attack.run import AttackConfig, ColumnOverrides, run_attacks

    cfg = AttackConfig(
        **generation_kwargs(args),
        **classifier_options(args),
        attack_sets=list(args.attack_set),
        columns=ColumnOverrides(args.prompt_column, args.id_column, args.seed_column, args.guidance_column),
        images_per_prompt=args.images_per_prompt,
    )
    rows = run_attacks(cfg, shard=args.shard)
    if rows is not None:
        print((Path(args.out) / "attack.md").read_text(encoding="utf-8"))
    return 0


COMMANDS = (
    Command(
        "attack",
        "attack success rate of adversarial prompt sets (Ring-A-Bell, P4D ...)",
        "Generate the prompts of adversarial prompt sets under each condition (the t2i runner), label them by each "
        "set's rule and write the attack success rates, attack.{csv,md,tex}.",
        add_arguments,
        run,
    ),
)
