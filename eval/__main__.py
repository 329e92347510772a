"""Command line of the evaluation harness: ``python -m eval <command>``.

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
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from eval.classifiers import PAPER_RULE
from eval.errors import EvalError
from eval.options import (
    add_classifier_options,
    add_lease_option,
    add_placement_options,
    classifier_options,
    comma_list,
    generation_options,
)
from eval.placement import default_device
from eval.report.paper_tables import T2I
from eval.t2i.conditions import BASE_CONDITIONS
from safe_encoders.cli.errors import add_debug_option, run_command

if TYPE_CHECKING:
    from eval.data.visu import VisuSource


def _add_report_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("report")
    g.add_argument(
        "--paper-reference",
        default="sd-v1.4",
        choices=[*T2I, "none"],
        help="the published table printed beside ours, every cell: sd-v1.4 (Table 4) or sd-v2.0 (Table 12)",
    )
    g.add_argument("--grids", type=int, default=0, help="write an image grid for the first N prompts")
    g.add_argument("--no-blur", action="store_true", help="do not blur flagged images in the grids")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    add_debug_option(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    t2i = sub.add_parser("t2i", help="text-to-image NSFW probability (I2P / ViSU tables)")
    t2i.add_argument("--model", required=True, help="diffusers SD pipeline: Hub id or local folder")
    t2i.add_argument(
        "--prompts", required=True, help="'i2p', 'visu', 'i2p=FILE', 'visu=FILE_OR_FOLDER', or a CSV/TXT prompt file"
    )
    t2i.add_argument(
        "--conditions",
        default="sd,sd+safe",
        help=f"comma-separated, from {', '.join(BASE_CONDITIONS)}, each optionally +safe / +unet",
    )
    t2i.add_argument(
        "--safe-checkpoint",
        default="auto",
        help="anything safe_encoders.make_safe accepts (registry name, Hub id, folder, file)",
    )
    t2i.add_argument("--unet", default=None, help="UNet override for '+unet' conditions (folder, Hub id, file)")
    t2i.add_argument("--limit", type=int, default=None, help="first N prompts only")
    t2i.add_argument(
        "--id-column",
        default=None,
        help="prompt-file column with unique prompt ids (default: case_number, incremental_id, prompt_id, id, "
        "an unnamed index column); e.g. --id-column '' for the unnamed index when case_number repeats",
    )
    t2i.add_argument("--images-per-prompt", type=int, default=5, help="Safe-CLIP: 5; I2P paper: 10")
    t2i.add_argument("--steps", type=int, default=50)
    t2i.add_argument(
        "--guidance", type=float, default=None, help="guidance scale; default: the prompt set's own (I2P), else 7.5"
    )
    t2i.add_argument("--size", type=int, default=None, help="image height and width; default: the model's")
    t2i.add_argument("--batch-size", type=int, default=4)
    add_placement_options(t2i)
    t2i.add_argument("--out", required=True, type=Path, help="output folder (resumed if it holds a run)")
    t2i.add_argument("--no-progress", action="store_true")
    add_classifier_options(t2i)
    _add_report_options(t2i)

    cls = sub.add_parser("classify", help="(re-)classify the images of a run")
    cls.add_argument("--out", required=True, type=Path)
    cls.add_argument(
        "--reclassify",
        default=None,
        help="comma-separated classifiers whose stored labels are dropped first ('all' for every one)",
    )
    cls.add_argument("--device", default=None)
    add_lease_option(cls)
    cls.add_argument("--no-progress", action="store_true")
    add_classifier_options(cls)
    _add_report_options(cls)

    rep = sub.add_parser("report", help="rewrite the report of a run")
    rep.add_argument("--out", required=True, type=Path)
    rep.add_argument("--rule", default=",".join(PAPER_RULE))
    _add_report_options(rep)

    ret = sub.add_parser("retrieval", help="ViSU retrieval table (Safe-CLIP Table 2) for encoder pairs")
    ret.add_argument(
        "--model",
        action="append",
        default=[],
        help="NAME=SOURCE or NAME=TEXT_SOURCE::VISION_SOURCE (repeat for several models); a source is a Hub id "
        "or folder of a CLIP model, a registry name (e.g. safeclip-vit-l-14), or our exported folder / file",
    )
    ret.add_argument(
        "--backbones",
        default=None,
        help="per-backbone table: original CLIP and Safe-CLIP for each of these backbones, comma-separated "
        "(ViT-L/14, ViT-L/14@336, ViT-H/14) or 'all'; combines with --model",
    )
    ret.add_argument(
        "--processor", default=None, help="tokenizer + image processor (Hub id / folder); default: each model's base"
    )
    ret.add_argument("--visu", default=None, help="ViSU-Text: split file or folder; default the gated HF dataset")
    ret.add_argument("--split", default="test", choices=["train", "validation", "test"])
    ret.add_argument("--coco-root", required=True, type=Path, help="COCO folder holding train2017/ and val2017/")
    ret.add_argument(
        "--unsafe-images", required=True, type=Path, help="folder (or manifest) of `python -m train visu-images`"
    )
    ret.add_argument("--on-missing", default="skip", choices=["skip", "fail"], help="rows lacking an image")
    ret.add_argument("--limit", type=int, default=None, help="first N usable rows only")
    ret.add_argument("--cache-dir", type=Path, default=None, help="embedding cache (default: OUT/embeddings)")
    ret.add_argument("--batch-size", type=int, default=64)
    ret.add_argument("--device", default=None)
    ret.add_argument("--token", default=None, help="HF token for the gated ViSU-Text (default: the HF login)")
    ret.add_argument("--no-reference", action="store_true", help="omit the paper's Table 2 rows")
    ret.add_argument("--out", required=True, type=Path)

    hy = sub.add_parser("hysac", help="HySAC classification and retrieval with / without traversal")
    hy.add_argument(
        "--model",
        action="append",
        required=True,
        help="NAME=SOURCE (repeat for several): anything HySAC.from_pretrained takes (our export folder, 'hysac')",
    )
    src = hy.add_mutually_exclusive_group(required=True)
    src.add_argument("--coco-root", type=Path, default=None, help="ViSU: COCO folder holding train2017/, val2017/")
    src.add_argument(
        "--synthetic", type=int, default=None, metavar="N", help="offline: N quadruplets of the synthetic world"
    )
    hy.add_argument("--unsafe-images", type=Path, default=None, help="ViSU: output of `python -m train visu-images`")
    hy.add_argument("--visu", default=None, help="ViSU-Text: split file or folder; default the gated HF dataset")
    hy.add_argument("--split", default="test", choices=["train", "validation", "test"])
    hy.add_argument("--on-missing", default="skip", choices=["skip", "fail"])
    hy.add_argument("--token", default=None, help="HF token for the gated ViSU-Text")
    hy.add_argument("--seed", type=int, default=2, help="synthetic world seed (the demo's test world: seed + 2)")
    hy.add_argument("--image-size", type=int, default=32, help="synthetic world image size")
    hy.add_argument("--limit", type=int, default=None, help="first N usable rows only")
    hy.add_argument(
        "--traversal-target",
        default="query",
        choices=["query", "gallery"],
        help="pull unsafe queries to the safe threshold of their own modality (as HySAC.traverse) or the gallery's",
    )
    hy.add_argument(
        "--traversal",
        default="release",
        choices=["release", "geodesic"],
        help="release: the authors' (rescale to norm tau = up95 + tanh((up95 - 0.8) / c) + 1); geodesic: ours",
    )
    hy.add_argument("--strength", type=float, default=1.0, help="geodesic traversal strength (1: onto the boundary)")
    hy.add_argument("--batch-size", type=int, default=32)
    hy.add_argument("--device", default=None)
    hy.add_argument("--out", required=True, type=Path)

    from eval.attack import run as attack_run
    from eval.i2t import command as i2t_cli
    from eval.nsfw_retrieval import command as nsfw_retrieval_cli
    from eval.quality import run as quality

    nsfw_retrieval_cli.add_command(sub)
    i2t_cli.add_commands(sub)
    quality.add_parser(sub)
    attack_run.add_parser(sub)
    return parser


def _visu_source(args: argparse.Namespace) -> VisuSource:
    """The ViSU split the ``--visu``, ``--split``, ``--coco-root``, ``--unsafe-images``, ``--on-missing`` and
    ``--token`` options name; its load report goes to ``OUT/visu-<split>-report.json``."""
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


def _hysac(args: argparse.Namespace) -> int:
    import json

    from eval.hysac.run import embed_quadruplet_lists, evaluate_hysac, write_hysac_reports
    from safe_encoders.hysac import HySAC

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

        data = data_from_visu(_visu_source(args))
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
                strength=args.strength,
                method=args.traversal,
            )
        )
    paths = write_hysac_reports(reports, args.out, split)
    (args.out / "hysac.json").write_text(json.dumps([r.to_dict() for r in reports], indent=2))
    print(paths["md"].read_text(encoding="utf-8"))
    print((args.out / "retrieval.md").read_text(encoding="utf-8"))
    return 0


def _retrieval(args: argparse.Namespace) -> int:
    from eval.retrieval.data import data_from_visu
    from eval.retrieval.embeddings import Embedder, EmbeddingCache
    from eval.retrieval.encoder_pairs import EncoderPair, backbone_pairs
    from eval.retrieval.run import run_retrieval, to_markdown

    pairs = []
    if args.backbones:
        pairs += backbone_pairs(None if args.backbones.strip() == "all" else comma_list(args.backbones))
    pairs += [EncoderPair.parse(spec, args.processor) for spec in args.model]
    if not pairs:
        raise EvalError("retrieval needs models: pass --model NAME=SOURCE (repeatable) and / or --backbones all")
    data = data_from_visu(_visu_source(args))
    if args.limit is not None:
        data = data.head(args.limit)
    device = default_device(args.device)
    embedder = Embedder(EmbeddingCache(args.cache_dir or args.out / "embeddings"), args.batch_size, device)
    rows = run_retrieval(pairs, data, args.out, embedder=embedder, reference=not args.no_reference)
    print(to_markdown(rows, args.split))
    return 0


def _reference(args: argparse.Namespace) -> str | None:
    return None if args.paper_reference == "none" else args.paper_reference


def _classifier_factory(args: argparse.Namespace):
    from eval.classifiers import ClassifierOptions, classifiers_from_config

    options = ClassifierOptions(**classifier_options(args))
    return lambda: classifiers_from_config(options, device=default_device(args.device))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(_run, args)  # a user error: one line and exit status 2 (--debug: the traceback)


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not args.verbose:
        # diffusers warns on every pipeline built without its safety checker (deliberate here: the
        # evaluation must see raw images) and on the deprecated SLD pipeline; keep the output readable.
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()
    if args.command == "retrieval":
        return _retrieval(args)
    if args.command == "hysac":
        return _hysac(args)
    if args.command == "i2t":
        from eval.i2t.command import run_i2t

        return run_i2t(args)
    if args.command == "i2t-judge":
        from eval.i2t.command import run_i2t_judge

        return run_i2t_judge(args)
    if args.command == "nsfw-retrieval":
        from eval.nsfw_retrieval.command import run_command as run_nsfw_retrieval

        return run_nsfw_retrieval(args)
    if args.command in ("quality", "attack"):
        from eval.attack import run as attack_run
        from eval.quality import run as quality

        return (quality if args.command == "quality" else attack_run).command(args)
    if args.command == "t2i":
        from eval.t2i.run import T2IConfig, T2IRunner

        cfg = T2IConfig(
            model=args.model,
            prompts=args.prompts,
            conditions=comma_list(args.conditions),
            out=args.out,
            safe_checkpoint=args.safe_checkpoint,
            unet=args.unet,
            images_per_prompt=args.images_per_prompt,
            id_column=args.id_column,
            reference=_reference(args),
            grids=args.grids,
            blur=not args.no_blur,
            **generation_options(args),
        )
        runner = T2IRunner(cfg, shard=args.shard)
        rows = runner.run()
        print(f"this worker generated {runner.generated} image(s)", file=sys.stderr)
        if rows is not None:
            print((args.out / "report.md").read_text(encoding="utf-8"))
        return 0
    from eval.report.t2i import write_report
    from eval.store.results import ResultsStore

    if not (args.out / "results.sqlite").is_file():
        raise EvalError(f"{args.out} holds no run (no results.sqlite)")
    store = ResultsStore(args.out)
    if store.get_meta("kind") == "i2t":
        raise EvalError(f"{args.out} holds an i2t run (texts): use `python -m eval i2t-judge --out {args.out}`")
    rule = comma_list(args.rule)
    if args.command == "classify":
        from eval.generation import classify_store

        if args.reclassify:
            for name in rule if args.reclassify == "all" else comma_list(args.reclassify):
                store.clear_labels(name)
        classify_store(
            store,
            _classifier_factory(args),
            rule=rule,
            batch_size=args.classify_batch_size,
            progress=not args.no_progress,
            lease=args.lease,
        )
    write_report(
        store, args.out, rule=rule, reference=_reference(args), grids=args.grids, blur_flagged=not args.no_blur
    )
    print((args.out / "report.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
