"""``eval hysac``: HySAC safe/unsafe classification (accuracy at the bounds, AUROC) and retrieval with and without
safety traversal, on ViSU or (``--synthetic N``) on the offline synthetic world."""

from __future__ import annotations

import argparse
from pathlib import Path

from eval.errors import EvalError
from eval.options import add_device_option, add_out_option, add_visu_options, visu_source
from safe_encoders.cli import Command
from safe_encoders.cli.types import nonnegative_float, nonnegative_int, positive_int


def add_traversal_options(p: argparse.ArgumentParser, *, target: bool = True) -> None:
    """How unsafe queries are moved: the released traversal (default) or the geodesic onto the safe bound."""
    p.add_argument(
        "--traversal",
        default="release",
        choices=["release", "geodesic"],
        help="release (default): the authors' traversal, an unsafe query farther from the root than "
        "tau = up95 + tanh((up95 - 0.8) / c) + 1 is rescaled to norm tau; geodesic: ours, along the geodesic "
        "toward the safe bound (with --strength)",
    )
    if target:
        p.add_argument(
            "--traversal-target",
            default="query",
            choices=["query", "gallery"],
            help="the bound a query is moved by: of its own modality (default, as HySAC.traverse) or the gallery's",
        )
    p.add_argument(
        "--strength",
        type=nonnegative_float,
        default=None,
        help="--traversal geodesic only: fraction of the way onto the bound (default 1: onto it; 0.5: halfway)",
    )


def traversal_strength(args: argparse.Namespace) -> float:
    """``--strength`` checked against ``--traversal`` (the released traversal has none)."""
    if args.strength is None:
        return 1.0
    if args.traversal != "geodesic":
        raise EvalError(
            f"--strength {args.strength:g} applies to --traversal geodesic; the default released traversal "
            "rescales to norm tau and has no strength"
        )
    return args.strength


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        action="append",
        required=True,
        help="NAME=SOURCE (repeat for several): anything HySAC.from_pretrained takes (our export folder, 'hysac')",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--coco-root", type=Path, default=None, help="ViSU: COCO folder holding train2017/, val2017/")
    src.add_argument(
        "--synthetic",
        type=positive_int,
        default=None,
        metavar="N",
        help="offline: N quadruplets of the synthetic world",
    )
    add_visu_options(p, coco_required=False)
    p.add_argument(
        "--seed", type=nonnegative_int, default=2, help="synthetic world seed (the demo's test world: seed + 2)"
    )
    p.add_argument("--image-size", type=positive_int, default=32, help="synthetic world image size (default 32)")
    p.add_argument("--limit", type=positive_int, default=None, help="first N usable rows only")
    add_traversal_options(p)
    p.add_argument("--batch-size", type=positive_int, default=32, help="items per forward pass (default 32)")
    add_device_option(p)
    add_out_option(p, help="output folder")


def run(args: argparse.Namespace) -> int:
    import json

    from eval.hysac.run import embed_quadruplet_lists, evaluate_hysac, write_hysac_reports
    from eval.placement import default_device
    from safe_encoders.hysac import HySAC

    strength = traversal_strength(args)
    if args.synthetic is not None:
        from eval.data.synthetic import SyntheticWorld

        world = SyntheticWorld(args.synthetic, seed=args.seed, image_size=args.image_size, distinct=True)
        items = [world[i] for i in range(len(world))]
        split = f"synthetic (seed {args.seed}, {len(items)} quadruplets)"
        lists = (
            [q.safe_text for q in items],
            [q.unsafe_text for q in items],
            [q.safe_image for q in items],
            [q.unsafe_image for q in items],
        )
    else:
        if args.unsafe_images is None:
            raise EvalError("hysac on ViSU needs --unsafe-images (the output folder of `python -m train visu-images`)")
        from eval.retrieval.data import data_from_visu

        data = data_from_visu(visu_source(args))
        split = args.split
        lists = (data.safe_texts, data.unsafe_texts, data.safe_images, data.unsafe_images)
    if args.limit is not None:
        lists = tuple(x[: args.limit] for x in lists)
    device = default_device(args.device)
    reports = []
    for spec in args.model:
        name, sep, source_name = spec.partition("=")
        if not sep or not name.strip() or not source_name.strip():
            raise EvalError(f"--model {spec!r}: expected NAME=SOURCE")
        model = HySAC.from_pretrained(source_name.strip()).to(device).eval()
        if model.bounds is None:
            raise EvalError(f"{source_name}: the model has no bounds, so there is no threshold to classify with")
        emb = embed_quadruplet_lists(model, *lists, batch_size=args.batch_size)
        curvature = model.curvature.detach().cpu()
        reports.append(
            evaluate_hysac(
                name.strip(),
                emb,
                curvature,
                model.bounds,
                target=args.traversal_target,
                strength=strength,
                method=args.traversal,
            )
        )
    paths = write_hysac_reports(reports, args.out, split)
    (args.out / "hysac.json").write_text(json.dumps([r.to_dict() for r in reports], indent=2))
    print(paths["md"].read_text(encoding="utf-8"))
    print((args.out / "retrieval.md").read_text(encoding="utf-8"))
    return 0


COMMANDS = (
    Command(
        "hysac",
        "HySAC classification and retrieval with / without traversal",
        "HySAC: safe/unsafe classification by root distance (accuracy at the bounds' thresholds, AUROC) and "
        "retrieval by Lorentz distance without and with safety traversal, on ViSU or (--synthetic N) offline.",
        add_arguments,
        run,
    ),
)
