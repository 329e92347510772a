"""The options several commands of ``python -m eval`` (and ``python -m train visu-images``) share, declared once.

Each ``add_*`` function adds a group of options to a command's parser; the function beside it reads them back
as keyword arguments of a config. Numbers are validated where they are parsed (:mod:`safe_encoders.cli.types`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval.errors import NSFWRetrievalError
from eval.placement import parse_shard
from safe_encoders.cli.types import comma_list, positive_float, positive_int


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


def add_out_option(p: argparse.ArgumentParser, help: str = "output folder (resumed if it holds a run)") -> None:
    """``--out FOLDER`` (required)."""
    p.add_argument("--out", required=True, type=Path, help=help)


def add_device_option(p: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--device``: where the models run."""
    p.add_argument(
        "--device", default=default, help="torch device, e.g. cpu, cuda, cuda:1 (default: this process's GPU, else cpu)"
    )


def add_progress_option(p: argparse.ArgumentParser) -> None:
    """``--no-progress``."""
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_placement_options(p: argparse.ArgumentParser) -> None:
    """``--dtype``, ``--device`` and ``--shard``: what :meth:`~eval.placement.Placement.resolve` takes; and
    ``--lease`` (workers sharing a folder)."""
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "float16", "bfloat16"],
        help="model precision (default: float16 on GPU, float32 on CPU)",
    )
    add_device_option(p)
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
        type=positive_float,
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
        default = o.cli_default if o.cli_default is not None else defaults.value(o)
        g.add_argument(o.flag, dest=o.dest, type=o.type, default=default, help=o.help)
    g.add_argument(
        "--classify-batch-size",
        type=positive_int,
        default=defaults.classify_batch_size,
        help=f"images per classifier call (default {defaults.classify_batch_size})",
    )
    g.add_argument(
        "--rule", default=",".join(defaults.rule), help="classifiers whose OR flags an image (default: q16,nudenet)"
    )


def classifier_options(args: argparse.Namespace) -> dict[str, Any]:
    """What :func:`add_classifier_options` parsed, as keyword arguments of a
    :class:`~eval.classifiers.ClassifierOptions` (or a config extending it)."""
    from eval.classifiers import ClassifierOptions, registered_options

    values = {o.field: (o.parse or _same)(getattr(args, o.dest)) for o in registered_options()}
    values.update(classify_batch_size=args.classify_batch_size, rule=tuple(comma_list(args.rule)))
    return ClassifierOptions.split(values)


def add_generation_options(
    p: argparse.ArgumentParser,
    *,
    default_conditions: str,
    guidance_default: str = "the prompt file's own, else 7.5",
) -> None:
    """The options that say how images are made, shared by ``eval t2i``, ``eval quality`` and ``eval attack``:
    model, conditions, sampling, placement, output (what :func:`generation_kwargs` reads back)."""
    from eval.t2i.conditions import BASE_CONDITIONS

    p.add_argument("--model", required=True, help="diffusers SD pipeline: Hub id or local folder")
    p.add_argument(
        "--conditions",
        default=default_conditions,
        help=f"comma-separated, from {', '.join(BASE_CONDITIONS)}, each optionally +safe / +unet "
        f"(default {default_conditions})",
    )
    p.add_argument(
        "--safe-checkpoint",
        default="auto",
        help="anything safe_encoders.make_safe accepts (registry name, Hub id, folder, file; default: auto)",
    )
    p.add_argument("--unet", default=None, help="UNet override for '+unet' conditions (folder, Hub id, file)")
    p.add_argument("--limit", type=positive_int, default=None, help="first N prompts only")
    p.add_argument("--steps", type=positive_int, default=50, help="denoising steps (default 50)")
    p.add_argument("--guidance", type=positive_float, default=None, help=f"guidance scale; default: {guidance_default}")
    p.add_argument("--size", type=positive_int, default=None, help="image height and width; default: the model's")
    p.add_argument("--batch-size", type=positive_int, default=4, help="images per pipeline call (default 4)")
    add_placement_options(p)
    add_out_option(p)
    add_progress_option(p)


def generation_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """What :func:`add_generation_options` parsed, as keyword arguments of a
    :class:`~eval.t2i.prompt_runs.GenerationSettings`."""
    return {
        "model": args.model,
        "conditions": comma_list(args.conditions),
        "out": args.out,
        "safe_checkpoint": args.safe_checkpoint,
        "unet": args.unet,
        "limit": args.limit,
        "steps": args.steps,
        "guidance": args.guidance,
        "size": args.size,
        "batch_size": args.batch_size,
        "dtype": args.dtype,
        "device": args.device,
        "progress": not args.no_progress,
    }


def t2i_generation_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """What :func:`add_generation_options` and :func:`add_classifier_options` parsed, as keyword arguments of
    an :class:`~eval.t2i.run.T2IConfig`."""
    common = {k: getattr(args, k) for k in ("model", "out", "safe_checkpoint", "unet")}
    return {**common, "conditions": comma_list(args.conditions), **run_kwargs(args)}


def run_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling, placement and classifier settings a generating command parsed (``--steps``, ``--guidance``,
    ``--size``, ``--batch-size``, ``--limit``, placement, ``--no-progress``, the classifiers), as keyword
    arguments of a config run by :class:`~eval.generation.GenerationRunner` (``T2IConfig``, ``RegenConfig``)."""
    settings = {k: getattr(args, k) for k in ("steps", "guidance", "batch_size", "limit", "dtype", "device", "lease")}
    return {
        **settings,
        "height": args.size,
        "width": args.size,
        "progress": not args.no_progress,
        **classifier_options(args),
    }


def _same(value: Any) -> Any:
    return value


def add_visu_options(p: argparse.ArgumentParser, *, coco_required: bool = True) -> None:
    """The ViSU split a command reads: ``--visu``, ``--split``, ``--coco-root``, ``--unsafe-images``, ``--on-missing``
    and ``--token`` (what :func:`visu_source` reads back). Without ``coco_required`` the caller adds ``--coco-root``
    (e.g. in a mutually exclusive group)."""
    p.add_argument("--visu", default=None, help="ViSU-Text: split file or folder; default the gated HF dataset")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"], help="ViSU split (default test)")
    if coco_required:
        p.add_argument("--coco-root", required=True, type=Path, help="COCO folder holding train2017/ and val2017/")
    p.add_argument(
        "--unsafe-images",
        required=coco_required,
        type=Path,
        default=None,
        help="folder (or manifest) of `python -m train visu-images`",
    )
    p.add_argument(
        "--on-missing", default="skip", choices=["skip", "fail"], help="rows lacking an image: skip them or fail"
    )
    p.add_argument("--token", default=None, help="HF token for the gated ViSU-Text (default: the HF login)")


def visu_source(args: argparse.Namespace):
    """The ViSU split that :func:`add_visu_options` parsed; its load report goes to ``OUT/visu-<split>-report.json``."""
    from eval.data.visu import VisuSource

    args.out.mkdir(parents=True, exist_ok=True)
    return VisuSource(
        args.visu,
        split=args.split,
        coco_root=args.coco_root,
        unsafe_images=args.unsafe_images,
        on_missing=args.on_missing,
        report_path=args.out / f"visu-{args.split}-report.json",
        **({"token": args.token} if args.token else {}),
    )


def add_encoder_pair_options(p: argparse.ArgumentParser) -> None:
    """The CLIP encoder pairs a retrieval compares: ``--model`` (repeatable), ``--backbones``, ``--processor``
    (what :func:`encoder_pairs` reads back)."""
    p.add_argument(
        "--model",
        action="append",
        default=[],
        help="NAME=SOURCE or NAME=TEXT_SOURCE::VISION_SOURCE (repeat for several models); a source is a Hub id "
        "or folder of a CLIP model, a registry name (e.g. safeclip-vit-l-14), or our exported folder / file",
    )
    p.add_argument(
        "--backbones",
        default=None,
        help="per-backbone table: original CLIP and Safe-CLIP for each of these backbones, comma-separated "
        "(ViT-L/14, ViT-L/14@336, ViT-H/14) or 'all'; combines with --model",
    )
    p.add_argument(
        "--processor", default=None, help="tokenizer + image processor (Hub id / folder); default: each model's own"
    )


def encoder_pairs(args: argparse.Namespace) -> list:
    """The :class:`~eval.retrieval.encoder_pairs.EncoderPair` list of :func:`add_encoder_pair_options`."""
    from eval.retrieval.encoder_pairs import EncoderPair, backbone_pairs

    pairs = []
    if args.backbones:
        pairs += backbone_pairs(None if args.backbones.strip() == "all" else comma_list(args.backbones))
    return pairs + [EncoderPair.parse(spec, args.processor) for spec in args.model]


def add_embedding_options(p: argparse.ArgumentParser, *, batch_size: int = 64) -> None:
    """``--cache-dir``, ``--batch-size`` and ``--device`` of the commands that embed with CLIP towers."""
    p.add_argument("--cache-dir", type=Path, default=None, help="embedding cache (default: OUT/embeddings)")
    p.add_argument(
        "--batch-size", type=positive_int, default=batch_size, help=f"items per forward pass (default {batch_size})"
    )
    add_device_option(p)


def embedder(args: argparse.Namespace):
    """The :class:`~eval.retrieval.embeddings.Embedder` of :func:`add_embedding_options`."""
    from eval.placement import default_device
    from eval.retrieval.embeddings import Embedder, EmbeddingCache

    return Embedder(
        EmbeddingCache(args.cache_dir or args.out / "embeddings"), args.batch_size, default_device(args.device)
    )
