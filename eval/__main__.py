"""Command line of the evaluation harness: ``python -m eval <command>``.

Each evaluation is a folder of ``eval/`` whose ``command.py`` holds its ``COMMANDS`` (``safe_encoders.cli.Command``
objects: name, help, options, run); :data:`EVALUATIONS` lists the folders. A new evaluation is one folder and one
line here.

Commands:
  t2i       generate, classify and report (resumes when --out already holds a run)
  classify  (re-)label the images of a run without regenerating them
  report    rewrite report.csv / .md / .tex / .png (and grids) from a run's store
  retrieval Safe-CLIP Table 2 (T->V, V->T, T*->V+V*, V*->T+T*; R@1/10/20) for encoder pairs on ViSU
  hysac     HySAC: safe/unsafe classification (accuracy at the bounds, AUROC) and retrieval with and
            without safety traversal, on ViSU or (--synthetic N) on the offline synthetic world
  nsfw-retrieval  Safe-CLIP Tables 3 / 11: share of queries whose top-1 is NSFW among distractors
  i2t       LLaVA describes NSFW images with and without the Safe-CLIP tower; open judges (Tables 5 / 13)
  i2t-judge (re-)judge the descriptions of an i2t run without regenerating them, and rewrite its report
  quality   FID and CLIP score of conditions on a caption set (COCO-30k; Safe-CLIP Table 14)
  attack    attack success rate of adversarial prompt sets (Ring-A-Bell, MMA-Diffusion, UnlearnDiffAtk, P4D)
  zero-shot zero-shot classification / image-text retrieval through clip_benchmark, with the difference to the
            original CLIP (what a safe encoder costs a CLIP user)
  vlm-bench LLaVA with and without the Safe-CLIP tower on lmms-eval tasks (MME, MMMU, AI2D, POPE; Table 15)
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from safe_encoders.cli import Command
from safe_encoders.cli.program import build_program, run_program

#: The evaluations, as packages holding a ``command`` module with ``COMMANDS``, in the order of ``--help``.
EVALUATIONS: list[str] = [
    "eval.t2i",
    "eval.retrieval",
    "eval.hysac",
    "eval.nsfw_retrieval",
    "eval.i2t",
    "eval.quality",
    "eval.attack",
    "eval.zero_shot",
    "eval.vlm_bench",
]


def commands() -> list[Command]:
    """The commands of every registered evaluation, each writing ``provenance.json`` into its ``--out``."""
    listed = [c for package in EVALUATIONS for c in importlib.import_module(f"{package}.command").COMMANDS]
    return [dataclasses.replace(c, run=_recorded(c)) for c in listed]


def _recorded(command: Command):
    """``command.run``, then (on success, where the command has an ``--out``) its provenance beside its results."""

    def run(args: argparse.Namespace) -> int:
        code = command.run(args)
        out = getattr(args, "out", None)
        if code == 0 and out is not None and Path(out).is_dir():
            from eval.report.provenance import write_provenance

            write_provenance(out, args, command=command.name)
        return code

    return run


def build_parser() -> argparse.ArgumentParser:
    return build_program(
        "python -m eval",
        __doc__ or "",
        commands(),
        add_global=lambda p: p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level"),
    )


def _quiet_libraries(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not args.verbose:
        # diffusers warns on every pipeline built without its safety checker (deliberate here: the
        # evaluation must see raw images) and on the deprecated SLD pipeline; keep the output readable.
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a user error is one line and exit status 2 (``--debug``: the traceback)."""
    return run_program(build_parser(), argv, before=_quiet_libraries)


if __name__ == "__main__":
    sys.exit(main())
