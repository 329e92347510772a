"""Command line of the trainer: ``python -m train {demo,safeclip,hysac,export,visu-images} ...``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from safe_encoders.cli import Command
from safe_encoders.cli.program import build_program, run_program


def _demo(args: argparse.Namespace) -> int:
    from train.demo_cli import demo_main

    return demo_main(args)


def _datasets(cfg, args: argparse.Namespace, *, train: bool = True):
    """(tokenizer, image processor, train set, validation set, collate_fn) of ``cfg.data``; None after an error.

    With ``train=False`` only the validation set is built (the train set is None).
    """
    from transformers import CLIPTokenizer

    from safe_encoders.image_processors import clip_image_processor_class
    from train.data import EncodedQuadruplets, QuadrupletCollator, stack_encoded

    if cfg.data.source not in ("synthetic", "visu"):
        print(
            f"data.source={cfg.data.source!r} is unknown; use data.source=visu or data.source=synthetic",
            file=sys.stderr,
        )
        return None
    tokenizer = CLIPTokenizer.from_pretrained(cfg.base_model)
    processor = clip_image_processor_class().from_pretrained(cfg.base_model)
    collator = QuadrupletCollator(tokenizer, processor)
    if cfg.data.source == "visu":
        if not (args.coco_root and args.unsafe_images):
            print(
                "data.source=visu needs --coco-root (COCO with train2017/, val2017/) and --unsafe-images "
                "(the output folder of `python -m train visu-images`)",
                file=sys.stderr,
            )
            return None
        from eval.data.visu import visu_splits
        from train.data import IndexedQuadruplets

        sets = visu_splits(
            args.visu_text,
            coco_root=args.coco_root,
            unsafe_images=args.unsafe_images,
            report_dir=cfg.output_dir,
            splits=("train", "validation") if train else ("validation",),
            on_missing=args.on_missing,
            **({"token": args.token} if args.token else {}),
        )
        # Items are encoded batch by batch: pre-encoding 165k image pairs would not fit in memory.
        train_set = IndexedQuadruplets(sets["train"]) if train else None
        return tokenizer, processor, train_set, IndexedQuadruplets(sets["validation"]), collator
    from eval.data.synthetic import SyntheticWorld

    val_world = SyntheticWorld(cfg.data.val_size, cfg.data.seed + 1, cfg.data.image_size, distinct=True)
    train_set = None
    if train:
        world = SyntheticWorld(cfg.data.train_size, cfg.data.seed, cfg.data.image_size)
        train_set = EncodedQuadruplets(world, collator)
    return (
        tokenizer,
        processor,
        train_set,
        EncodedQuadruplets(val_world, collator),
        stack_encoded,
    )


def _train(args: argparse.Namespace, method_name: str) -> int:
    """``python -m train safeclip|hysac``: train the method of the command (the table in train.methods), then
    export when the method does so after training."""
    from train.checkpoints import seed_everything
    from train.config import load_config
    from train.loop import run_training
    from train.methods import METHODS, ValidationData
    from train.model import load_base_encoders

    method = METHODS[method_name]
    cfg = load_config(args.config, [f"method={method_name}", *args.overrides])  # the recipe gives the settings
    if cfg.method != method_name:
        print(f"python -m train {args.command} trains {method_name}: drop the method= override", file=sys.stderr)
        return 2
    data = _datasets(cfg, args)
    if data is None:
        return 2
    tokenizer, processor, train_set, val_set, collate = data
    seed_everything(cfg.seed)  # before the LoRA factors are drawn: same config + seed = same run
    model = method.build(cfg, *load_base_encoders(cfg.base_model), tokenizer, processor)
    result = run_training(cfg, model, train_set, val_set, collate)
    summary = (
        f"done: {result.global_step} steps, best {cfg.early_stopping_metric}={result.best_metric} "
        f"at epoch {result.best_epoch}"
    )
    if not method.export_after_training:
        print(f"{summary}; run folder {result.output_dir}")
        return 0
    out = args.out or Path(cfg.output_dir) / f"{method.name}_export"
    validation = ValidationData(val_set, collate, cfg.data.batch_size)  # the best weights are loaded
    print(f"{summary}; {method.export(model, out, cfg, validation, args.data_description)}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from safetensors.torch import load_file

    from train.config import load_config
    from train.methods import ValidationData, method_of
    from train.model import load_base_encoders

    run = Path(args.run)
    missing = [name for name in ("config.yaml", "best_adapters.safetensors") if not (run / name).is_file()]
    if missing:
        print(
            f"error: {run} is not a finished training run (missing {', '.join(missing)}); pass the output_dir of "
            "`python -m train safeclip` (or `python -m train hysac`) after at least one validation",
            file=sys.stderr,
        )
        return 2
    cfg = load_config(run / "config.yaml")
    method = method_of(cfg)
    if args.push_to_hub and not method.hub_upload:
        print(
            "error: --push-to-hub uploads Safe-CLIP encoders with a Safe-CLIP model card, and this is a "
            f"{method.title} run (method: {method.name}); export without --push-to-hub, then upload the folder "
            "(e.g. `hf upload`)",
            file=sys.stderr,
        )
        return 2
    tokenizer = processor = validation = None
    if method.export_needs_validation:  # HySAC's bounds come from the validation set
        data = _datasets(cfg, args, train=False)
        if data is None:
            return 2
        tokenizer, processor, _, val_set, collate = data
        validation = ValidationData(val_set, collate, cfg.data.batch_size)
    model = method.build(cfg, *load_base_encoders(cfg.base_model), tokenizer, processor)
    model.load_trainable_state_dict(load_file(str(run / "best_adapters.safetensors")))
    print(method.export(model, Path(args.out), cfg, validation, args.data_description))
    if args.push_to_hub:
        from train.export import push_to_hub

        print(f"pushed: {push_to_hub(args.out, args.push_to_hub, private=not args.public)}")
    return 0


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--visu-text", default=None, help="ViSU-Text split file/folder; default the gated HF dataset")
    parser.add_argument("--coco-root", default=None, help="COCO folder with train2017/ and val2017/")
    parser.add_argument("--unsafe-images", default=None, help="output folder (or manifest) of `visu-images`")
    parser.add_argument("--token", default=None, help="HF token for the gated ViSU-Text (default: the HF login)")
    parser.add_argument(
        "--on-missing",
        default="skip",
        choices=["skip", "fail"],
        help="rows whose image is missing: skip them (listed in a report) or fail the run",
    )


def _add_demo_arguments(demo: argparse.ArgumentParser) -> None:
    from train.demo_cli import add_demo_arguments  # the demo's options live with the demo (light import)

    add_demo_arguments(demo)


def _add_safeclip_arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument("--config", default="vit-l-14", help="recipe name in train/recipes or a YAML path")
    run.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. optim.lr=3e-4")
    _add_data_options(run)


def _add_hysac_arguments(hysac: argparse.ArgumentParser) -> None:
    hysac.add_argument("--config", default="hysac-vit-l-14", help="recipe name in train/recipes or a YAML path")
    hysac.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. hysac.weights.ent_vu=0.5")
    _add_data_options(hysac)
    hysac.add_argument("--out", default=None, help="export folder (default: OUTPUT_DIR/hysac_export)")
    hysac.add_argument("--data-description", default=None, help="what the model was trained on, for the model card")


def _add_export_arguments(export: argparse.ArgumentParser) -> None:
    export.add_argument("--run", required=True, help="run folder (holds config.yaml and best_adapters.safetensors)")
    export.add_argument("--out", required=True, help="export folder")
    export.add_argument("--data-description", default=None, help="what the model was trained on, for the model card")
    export.add_argument(
        "--push-to-hub",
        metavar="REPO_ID",
        default=None,
        help="upload the exported encoders with a generated model card (needs `hf auth login`)",
    )
    export.add_argument("--public", action="store_true", help="with --push-to-hub: create a public repository")
    _add_data_options(export)  # a HySAC run's bounds are recomputed on its validation set


def commands() -> list[Command]:
    """The trainer's commands, in the order of ``--help``."""
    from train.visu_images import COMMAND as VISU_IMAGES

    return [
        Command(
            "demo",
            "offline end-to-end demo on the synthetic world (a few minutes on a CPU)",
            "Pre-train a tiny CLIP on the synthetic world, fine-tune Safe-CLIP (and HySAC) on it, evaluate and "
            "write the tables and chart.",
            _add_demo_arguments,
            _demo,
        ),
        Command(
            "safeclip",
            "Safe-CLIP fine-tuning from a YAML recipe",
            "Safe-CLIP fine-tuning from a YAML recipe (train/recipes) with key=value overrides.",
            _add_safeclip_arguments,
            lambda args: _train(args, "safe-clip"),
        ),
        Command(
            "hysac",
            "HySAC fine-tuning from a YAML recipe; exports with bounds from validation",
            "HySAC fine-tuning from a YAML recipe (train/recipes); exports with bounds from the validation set.",
            _add_hysac_arguments,
            lambda args: _train(args, "hysac"),
        ),
        Command(
            "export",
            "merge the best adapters of a run and export both encoders (HySAC runs: with bounds from validation)",
            "Merge the best adapters of a training run and export both encoders (HySAC runs: with bounds from "
            "validation); optionally upload them.",
            _add_export_arguments,
            _export,
        ),
        VISU_IMAGES,
    ]


def build_parser() -> argparse.ArgumentParser:
    return build_program("python -m train", __doc__ or "", commands())


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user error is one line and exit status 2 (``--debug``: the traceback)."""
    return run_program(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
