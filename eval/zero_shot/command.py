"""``eval zero-shot``: zero-shot classification and image-text retrieval of CLIPs, Safe-CLIPs and HySACs through
clip_benchmark's metric functions, with the difference to the original CLIP beside each number."""

from __future__ import annotations

import argparse
from pathlib import Path

from eval.options import add_device_option, add_out_option
from safe_encoders.cli import Command
from safe_encoders.cli.types import comma_list, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models (the first --model is the baseline unless --baseline says otherwise)")
    g.add_argument(
        "--model",
        action="append",
        default=[],
        help="NAME=SOURCE or NAME=TEXT_SOURCE::VISION_SOURCE (repeatable): a CLIP Hub id or folder, a registry name "
        "(e.g. safeclip-vit-l-14) or our exported folder / file",
    )
    g.add_argument("--hysac", action="append", default=[], help="NAME=SOURCE of a HySAC (Lorentz similarity)")
    g.add_argument(
        "--processor", default=None, help="tokenizer + image processor (Hub id / folder); default: each model's own"
    )
    g.add_argument("--baseline", default=None, help="model name the differences are taken to (default: the first)")
    d = p.add_argument_group("datasets")
    d.add_argument(
        "--folder",
        action="append",
        default=[],
        help="NAME=FOLDER of class sub-folders of images (classnames.txt beside them renames the classes)",
    )
    d.add_argument("--templates", type=Path, default=None, help="templates of --folder, one per line with {c}")
    d.add_argument(
        "--captions", action="append", default=[], help="NAME=CSV with image,caption rows (retrieval; repeatable)"
    )
    d.add_argument(
        "--dataset",
        action="append",
        default=[],
        help="a dataset clip_benchmark builds (cifar10, imagenet1k, mscoco_captions, ...; needs torchvision)",
    )
    d.add_argument("--dataset-root", type=Path, default=Path("clip_benchmark_data"), help="where --dataset lives")
    d.add_argument("--split", default="test", help="split of --dataset (default test)")
    d.add_argument("--download", action="store_true", help="let clip_benchmark download --dataset")
    p.add_argument("--recall-k", default="1,5,10", help="recall@k of the retrieval datasets (default 1,5,10)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--amp", action="store_true", help="autocast the CLIPs (GPU; never HySAC's float64 lift)")
    add_device_option(p)
    add_out_option(p, help="output folder (zero_shot.csv / .md / .tex)")


def run(args: argparse.Namespace) -> int:
    from eval.placement import default_device
    from eval.zero_shot.data import benchmark_dataset, caption_dataset, folder_dataset
    from eval.zero_shot.models import ZeroShotError, load_clip, load_hysac_model
    from eval.zero_shot.run import ZeroShotConfig, run_zero_shot

    try:
        recall_k = tuple(int(k) for k in comma_list(args.recall_k))
    except ValueError:
        raise ZeroShotError(f"--recall-k {args.recall_k!r}: expected whole numbers >= 1, e.g. 1,5,10") from None
    if not recall_k or min(recall_k) < 1:
        raise ZeroShotError(f"--recall-k {args.recall_k!r}: expected whole numbers >= 1, e.g. 1,5,10")
    device = default_device(args.device)
    datasets = [folder_dataset(spec, args.templates) for spec in args.folder]
    datasets += [caption_dataset(spec) for spec in args.captions]
    datasets += [benchmark_dataset(n, args.dataset_root, args.split, args.download) for n in args.dataset]
    # Loaded one at a time (a full-size CLIP each): the loaders run when the model's turn comes.
    models = [lambda spec=spec: load_clip(spec, args.processor, device) for spec in args.model]
    models += [lambda spec=spec: load_hysac_model(spec, device) for spec in args.hysac]
    cfg = ZeroShotConfig(
        out=args.out,
        batch_size=args.batch_size,
        device=device,
        amp=args.amp,
        recall_k=recall_k,
        baseline=args.baseline,
    )
    run_zero_shot(models, datasets, cfg)
    print((args.out / "zero_shot.md").read_text(encoding="utf-8"))
    return 0


COMMANDS = (
    Command(
        "zero-shot",
        "zero-shot classification / retrieval with clip_benchmark (what safety costs a CLIP user)",
        "Zero-shot classification and image-text retrieval of CLIPs, Safe-CLIPs and HySACs (Lorentz similarity) "
        "through clip_benchmark's own metric functions, on local folders or clip_benchmark's datasets; writes "
        "zero_shot.{csv,md,tex}, one row per model and dataset with the difference to the baseline beside each.",
        add_arguments,
        run,
    ),
)
