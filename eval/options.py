"""Argument helpers shared by the commands of ``python -m eval`` and ``python -m train visu-images``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval.errors import NSFWRetrievalError
from eval.placement import parse_shard


def comma_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: a comma-separated command-line value."""
    return [t.strip() for t in text.split(",") if t.strip()]


def named_folders(specs: Sequence[str], option: str) -> dict[str, Path]:
    """``["NAME=FOLDER", ...]`` (the values of a repeated ``option``) -> ``{NAME: FOLDER}``; names distinct."""
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name.strip() or not folder.strip():
            raise NSFWRetrievalError(f"{option} {spec!r}: expected NAME=FOLDER")
        if name.strip() in out:
            raise NSFWRetrievalError(f"{option}: source {name.strip()!r} given twice")
        out[name.strip()] = Path(folder.strip())
    return out


def add_placement_options(p: argparse.ArgumentParser) -> None:
    """``--dtype``, ``--device`` and ``--shard``: what :meth:`~eval.placement.Placement.resolve` takes; and
    ``--lease`` (workers sharing a folder)."""
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "float16", "bfloat16"],
        help="default: float16 on GPU, float32 on CPU",
    )
    p.add_argument("--device", default=None)
    p.add_argument(
        "--shard",
        type=parse_shard,
        default=None,
        help="INDEX/COUNT: run one shard by hand (default: one per accelerate process)",
    )
    add_lease_option(p)


def add_lease_option(p: argparse.ArgumentParser) -> None:
    """``--lease``: how long a dead worker's claims keep its items from the others (``eval.store.leases``)."""
    from eval.store.leases import DEFAULT_LEASE

    p.add_argument(
        "--lease",
        type=float,
        default=DEFAULT_LEASE,
        metavar="SECONDS",
        help="workers on one --out split the work by claims; a dead worker's items are redone after this long "
        f"(default {DEFAULT_LEASE:g})",
    )


def add_classifier_options(p: argparse.ArgumentParser) -> None:
    """The options of every registered classifier, the batch size and the rule, as a group of ``p``
    (what :func:`classifier_options` reads back)."""
    from eval.classifiers import ClassifierOptions, registered_options

    defaults = ClassifierOptions()
    g = p.add_argument_group("classifiers (the tables' rule: Q16 OR NudeNet)")
    for o in registered_options():
        default = o.cli_default if o.cli_default is not None else getattr(defaults, o.field)
        g.add_argument(o.flag, dest=o.dest, type=o.type, default=default, help=o.help)
    g.add_argument("--classify-batch-size", type=int, default=defaults.classify_batch_size)
    g.add_argument(
        "--rule", default=",".join(defaults.rule), help="classifiers whose OR flags an image (default: q16,nudenet)"
    )


def classifier_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~eval.classifiers.ClassifierOptions` fields that :func:`add_classifier_options` parsed, as
    keyword arguments."""
    from eval.classifiers import registered_options

    out = {o.field: (o.parse or _same)(getattr(args, o.dest)) for o in registered_options()}
    return {**out, "classify_batch_size": args.classify_batch_size, "rule": tuple(comma_list(args.rule))}


def generation_options(args: argparse.Namespace) -> dict[str, Any]:
    """The settings every image-generating command shares (steps, guidance, ``--size``, batch size, limit,
    placement, progress and the classifiers), as config keyword arguments."""
    return {
        "steps": args.steps,
        "guidance": args.guidance,
        "height": args.size,
        "width": args.size,
        "batch_size": args.batch_size,
        "limit": args.limit,
        "dtype": args.dtype,
        "device": args.device,
        "progress": not args.no_progress,
        "lease": args.lease,
        **classifier_options(args),
    }


def _same(value: Any) -> Any:
    return value
