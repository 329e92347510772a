"""Regeneration of ViSU's unsafe images (v*): ``python -m train visu-images ...``.

The authors did not release the unsafe images; they published the unsafe captions (and seeds).
For each unsafe caption t* this draws ``candidates`` images (3 in the paper) with a diffusers
text-to-image pipeline (default the NSFW-capable SDXL model of the paper), labels them with
``eval``'s classifiers (Q16 and NudeNet; an image is flagged when any classifier of ``rule`` flags
it) and keeps one per row by a *keep rule* (the authors': the first flagged candidate).

It runs on the same runner as ``python -m eval t2i`` (:class:`eval.generation.GenerationRunner`, with
:class:`train.visu_work.VisuRegenProvider` as its work): every image lives in an
:class:`eval.store.results.ResultsStore`
keyed by ``(visu-<split>, visu:<row id>, seed)``, written atomically, so a killed run resumes where
it stopped, and processes split the work by :func:`eval.placement.shard_of` (one shard per accelerate
process, or ``--shard INDEX/COUNT``). Candidate ``k`` of a row uses the row's published seed + k
(or ``seeds[k]`` when the row lists its seeds), else a seed derived from the row id; each image has
its own generator, so no image depends on batching, sharding or resuming.

The result is ``manifest.json`` and ``manifest.csv`` in the output folder (written atomically):
one line per row with its candidates' seeds and flags, the kept candidate, the image path
(relative to the folder) and a status: ``kept``, ``rejected`` (no candidate passes the keep rule)
or ``pending`` (not generated / labelled yet). :class:`eval.data.visu.VisuSource` reads it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from eval.data.visu import VISU_SPLITS, VisuRow, read_visu
from eval.generation import GenerationRunner
from eval.options import (
    add_classifier_options,
    add_placement_options,
    add_progress_option,
    comma_list,
    run_kwargs,
)
from eval.placement import Placement, run_provenance
from eval.store.results import ResultsStore, fully_labelled
from safe_encoders.atomic import atomic_write_text
from safe_encoders.cli import Command
from safe_encoders.cli.program import build_program, run_program
from safe_encoders.cli.types import positive_float, positive_int
from train.keep_rules import KEEP_RULES, Candidate, keep_rule
from train.visu_work import DEFAULT_MODEL, RegenConfig, RegenItem, VisuRegenProvider, condition_name, regen_items

logger = logging.getLogger(__name__)

MANIFEST_VERSION = 1
MANIFEST_COLUMNS = (
    "split", "row_id", "prompt_id", "caption", "tag", "seeds", "flags", "scores", "kept_index", "kept_seed",
    "image", "status",
)  # fmt: skip


class RegenRunner(GenerationRunner):
    """Runs (or resumes) one regeneration: generation, classification, then the manifest.

    ``shard`` = ``(index, count)``; by default one shard per accelerate process. ``pipeline`` and
    ``classifiers`` (a factory) replace the ones the config names (tests, or custom set-ups).
    """

    def __init__(
        self,
        config: RegenConfig,
        *,
        shard: tuple[int, int] | None = None,
        pipeline: Any = None,
        classifiers: Callable[[], list[Any]] | None = None,
    ) -> None:
        self.cfg = config
        if config.candidates < 1 or config.steps < 1 or config.batch_size < 1:
            raise ValueError("candidates, steps and batch_size must all be >= 1")
        self.keep = keep_rule(config.keep)
        bad = [s for s in config.splits if s not in VISU_SPLITS]
        if bad or not config.splits:
            raise ValueError(f"splits must be among {VISU_SPLITS}, got {config.splits}")
        placement = Placement.resolve(shard, device=config.device, dtype=config.dtype)
        self.rows: dict[str, list[VisuRow]] = {}
        for split in config.splits:
            rows = read_visu(config.text, split=split, **config.hub_kwargs)
            self.rows[split] = rows[: config.limit] if config.limit is not None else rows
        self.items = regen_items(self.rows, config.candidates)
        super().__init__(
            VisuRegenProvider(config, self.items, list(self.rows), placement, pipeline),
            ResultsStore(config.out),
            placement,
            config,
            classifiers=classifiers,
        )

    def condition_config(self, split: str) -> dict[str, Any]:
        return self.provider.condition_config(split)

    def manifest_rows(self) -> list[dict[str, Any]]:
        """One manifest line per row of the run (every shard), from what the store holds now."""
        rule = tuple(self.cfg.rule)
        labels = self.store.labels()
        stored = {it.key: it for it in self.store.items()}
        out: list[dict[str, Any]] = []
        by_row: dict[tuple[str, str], list[RegenItem]] = {}
        for w in self.items:
            by_row.setdefault((w.split, w.row.row_id), []).append(w)
        for (split, row_id), cands in by_row.items():
            row = cands[0].row
            line: dict[str, Any] = {
                "split": split,
                "row_id": row_id,
                "prompt_id": f"visu:{row_id}",
                "caption": row.unsafe_text,
                "tag": row.tag,
                "seeds": [w.seed for w in cands],
                "flags": None,
                "scores": None,
                "kept_index": None,
                "kept_seed": None,
                "image": "",
                "status": "pending",
            }
            ready = all(w.key in stored and fully_labelled(labels.get(w.key), rule) for w in cands)
            if ready:
                labelled = [Candidate(w.index, w.seed, labels[w.key], rule) for w in cands]
                kept = self.keep(labelled)
                line["flags"] = [c.flagged for c in labelled]
                line["scores"] = [round(c.score, 6) for c in labelled]
                if kept is None:
                    line["status"] = "rejected"
                else:
                    line.update(
                        kept_index=kept, kept_seed=cands[kept].seed, image=stored[cands[kept].key].path, status="kept"
                    )
            out.append(line)
        return out

    def write_manifest(self) -> dict[str, int]:
        """Write ``manifest.json`` and ``manifest.csv`` atomically; returns the count of each status."""
        rows = self.manifest_rows()
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.cfg).items()}
        cfg.pop("hub_kwargs", None)
        cfg.pop("out", None)
        cfg.pop("progress", None)
        doc = {
            "version": MANIFEST_VERSION,
            "keep_rule": self.cfg.keep,
            "classifier_rule": list(self.cfg.rule),
            "conditions": {condition_name(s): self.condition_config(s) for s in self.rows},
            "config": cfg,
            "counts": counts,
            "rows": rows,
        }
        root = Path(self.cfg.out)
        atomic_write_text(root / "manifest.json", json.dumps(doc, indent=1, sort_keys=True) + "\n")
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow(
                {k: json.dumps(v) if isinstance(v, list) else ("" if v is None else v) for k, v in r.items()}
            )
        atomic_write_text(root / "manifest.csv", buf.getvalue())
        return counts

    def run(self) -> dict[str, int] | None:
        """Generate, classify, and write the manifest (main process); returns the status counts."""
        if self.placement.shard_index == 0:
            self.store.set_meta("provenance", run_provenance())
        if not self.generate_and_classify():
            return None
        counts = self.write_manifest()
        if counts.get("pending"):
            logger.warning(
                "%d row(s) still pending (other shards working?); run again to complete the manifest", counts["pending"]
            )
        return counts


# --------------------------------------------------------------------------- command line


def add_visu_images_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``python -m train visu-images``."""
    p.add_argument("--out", required=True, type=Path, help="output folder (resumed if it holds a run)")
    p.add_argument(
        "--text",
        default=None,
        help="ViSU-Text: a split file or a folder of <split>.csv/.json/.parquet; default the HF dataset",
    )
    p.add_argument("--splits", default=",".join(VISU_SPLITS), help="comma-separated ViSU splits")
    p.add_argument("--model", default=DEFAULT_MODEL, help="diffusers text-to-image pipeline: Hub id or folder")
    p.add_argument("--candidates", type=positive_int, default=3, help="images drawn per caption (paper: 3)")
    p.add_argument("--steps", type=positive_int, default=30, help="denoising steps (default 30)")
    p.add_argument("--guidance", type=positive_float, default=7.0, help="guidance scale (default 7)")
    p.add_argument("--size", type=positive_int, default=None, help="image height and width; default: the model's")
    p.add_argument("--batch-size", type=positive_int, default=4, help="images per pipeline call (default 4)")
    p.add_argument("--limit", type=positive_int, default=None, help="first N rows of each split only")
    add_placement_options(p)
    p.add_argument("--token", default=None, help="HF token for the gated ViSU-Text (default: the HF login)")
    p.add_argument(
        "--keep",
        default="first-flagged",
        choices=sorted(KEEP_RULES),
        help="which candidate a row keeps (authors: first-flagged)",
    )
    add_progress_option(p)
    add_classifier_options(p)


def run_visu_images_command(args: argparse.Namespace) -> int:
    """Run the ``visu-images`` command from parsed arguments; prints the status counts."""
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    cfg = RegenConfig(
        out=args.out,
        text=args.text,
        splits=comma_list(args.splits),
        model=args.model,
        candidates=args.candidates,
        keep=args.keep,
        hub_kwargs={"token": args.token} if args.token else {},
        **run_kwargs(args),
    )
    counts = RegenRunner(cfg, shard=args.shard).run()
    if counts is not None:
        summary = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        print(f"manifest: {Path(args.out) / 'manifest.json'} {summary}")
    return 0


COMMAND = Command(
    "visu-images",
    "regenerate ViSU's unsafe images (resumable, shardable)",
    __doc__ or "",
    add_visu_images_arguments,
    run_visu_images_command,
)


def main(argv: list[str] | None = None) -> int:
    """``python -m train.visu_images ...`` (the same command as ``python -m train visu-images``)."""
    args = sys.argv[1:] if argv is None else list(argv)
    return run_program(build_program("python -m train.visu_images", __doc__ or "", [COMMAND]), ["visu-images", *args])


if __name__ == "__main__":
    raise SystemExit(main())
