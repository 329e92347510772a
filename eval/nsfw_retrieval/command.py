"""The ``nsfw-retrieval`` subcommand of ``python -m eval``: its options, and the run from parsed arguments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eval.data.prompts import VISU_TAG_TO_I2P, canonical_visu_tag
from eval.errors import NSFWRetrievalError
from eval.nsfw_retrieval.data import build_data, read_captions, visu_unsafe_texts
from eval.nsfw_retrieval.run import hysac_rows, pair_rows, write_nsfw_retrieval
from eval.options import named_folders
from safe_encoders.atomic import atomic_write_text


def add_command(sub: Any) -> None:
    """The ``nsfw-retrieval`` subcommand of ``python -m eval``."""
    p = sub.add_parser("nsfw-retrieval", help="NSFW retrieval among distractors (Safe-CLIP Tables 3 / 11)")
    p.add_argument(
        "--model", action="append", default=[], help="NAME=SOURCE or NAME=TEXT::VISION, as for `eval retrieval`"
    )
    p.add_argument("--backbones", default=None, help="original CLIP and Safe-CLIP per backbone, as `eval retrieval`")
    p.add_argument("--processor", default=None, help="tokenizer + image processor for --model pairs")
    p.add_argument(
        "--hysac", action="append", default=[], help="NAME=SOURCE: a HySAC model (HySAC.from_pretrained), repeatable"
    )
    p.add_argument("--strength", type=float, default=1.0, help="HySAC traversal strength (1: onto the boundary)")
    p.add_argument("--unsafe-images", action="append", required=True, help="NAME=FOLDER of real NSFW images")
    p.add_argument("--distractor-images", required=True, type=Path, help="folder of distractor images (LAION)")
    p.add_argument("--distractor-texts", required=True, type=Path, help="captions: .txt (one a line) or .csv")
    p.add_argument("--distractor-text-column", default=None, help="CSV column of the captions")
    texts = p.add_mutually_exclusive_group()
    texts.add_argument("--visu", default=None, help="ViSU-Text split file or folder; default the gated HF dataset")
    texts.add_argument("--unsafe-texts", type=Path, default=None, help="instead of ViSU: unsafe captions for all")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("--token", default=None, help="HF token for the gated ViSU-Text")
    p.add_argument(
        "--concepts",
        action="append",
        default=[],
        help="NAME=CONCEPT,CONCEPT: ViSU concepts of a source's unsafe texts (default: sexual,nudity; SMID: the rest)",
    )
    p.add_argument("--images-per-source", type=int, default=1000)
    p.add_argument("--distractors", type=int, default=10000, help="distractor images and captions each")
    p.add_argument("--texts-per-source", type=int, default=None, help="default: every matched unsafe text")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", type=Path, default=None, help="embedding cache (default: OUT/embeddings)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None)
    p.add_argument("--out", required=True, type=Path)


def run_command(args: Any) -> int:
    """Run ``python -m eval nsfw-retrieval`` from parsed arguments."""
    import json

    from eval.options import comma_list
    from eval.placement import default_device
    from eval.retrieval.embeddings import Embedder, EmbeddingCache
    from eval.retrieval.encoder_pairs import EncoderPair, backbone_pairs

    pairs = []
    if args.backbones:
        pairs += backbone_pairs(None if args.backbones.strip() == "all" else comma_list(args.backbones))
    pairs += [EncoderPair.parse(spec, args.processor) for spec in args.model]
    hysac = named_folders(args.hysac, "--hysac")
    names = [p.name for p in pairs] + list(hysac)
    if not names or len(set(names)) != len(names):
        raise NSFWRetrievalError(f"pass models with distinct names (--model / --backbones / --hysac); got {names}")
    if args.unsafe_texts is not None:
        unsafe: list[tuple[str, str | None]] = [(t, None) for t in read_captions(args.unsafe_texts)]
    else:
        unsafe = list(visu_unsafe_texts(args.visu, split=args.split, **({"token": args.token} if args.token else {})))
    overrides = {}
    for spec in args.concepts:
        name, _, listed = spec.partition("=")
        chosen = tuple(canonical_visu_tag(c) or c for c in comma_list(listed))
        unknown = [c for c in chosen if c not in VISU_TAG_TO_I2P]
        if not name.strip() or not chosen or unknown:
            raise NSFWRetrievalError(f"--concepts {spec!r}: expected NAME=CONCEPT,... among {sorted(VISU_TAG_TO_I2P)}")
        overrides[name.strip()] = chosen
    data = build_data(
        named_folders(args.unsafe_images, "--unsafe-images"),
        args.distractor_images,
        read_captions(args.distractor_texts, args.distractor_text_column),
        unsafe,
        images_per_source=args.images_per_source,
        distractors=args.distractors,
        texts_per_source=args.texts_per_source,
        seed=args.seed,
        concepts=overrides,
    )
    device = default_device(args.device)
    embedder = Embedder(EmbeddingCache(args.cache_dir or args.out / "embeddings"), args.batch_size, device)
    rows = [row for pair in pairs for row in pair_rows(pair, data, embedder)]
    for name, source in hysac.items():
        from safe_encoders.hysac import HySAC

        model = HySAC.from_pretrained(str(source)).to(device).eval()
        rows += hysac_rows(name, model, data, strength=args.strength, batch_size=args.batch_size)
    paths = write_nsfw_retrieval(rows, args.out)
    atomic_write_text(args.out / "nsfw_retrieval.json", json.dumps({**data.describe(), "seed": args.seed}, indent=2))
    print(paths["md"].read_text(encoding="utf-8"))
    return 0
