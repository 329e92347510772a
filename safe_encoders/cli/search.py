"""`safe-encoders search`: nearest items of a scanned collection to a text or an image, with a safety mode."""

from __future__ import annotations

import argparse
import json

from . import Command
from .types import positive_int

DESCRIPTION = """\
Search a collection scanned with --embeddings for the items nearest (Lorentz distance) to a text
or an image. The FAISS index is built on first use and kept in SCAN_FOLDER/.search-index/
(rebuilt when the scan changes).

Safety modes:
  keep      the nearest items as they are
  redirect  an unsafe query (beyond the model's bound of its modality) is first moved toward the
            root along its geodesic (HySAC's safety traversal), so it lands among safe content
  filter    items the scan flagged unsafe are never returned

examples:
  safe-encoders search scan_photos --text "a crowded beach" --k 5
  safe-encoders search scan_photos --text "..." --safety redirect --gallery image --json
  safe-encoders search scan_photos --image query.jpg --safety filter
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..moderation.search import INDEX_TYPES, SAFETY_MODES

    parser.add_argument("scan", metavar="SCAN_FOLDER", help="output folder of 'safe-encoders scan --embeddings'")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", action="append", help="query text (repeat for several queries)")
    query.add_argument("--image", action="append", help="query image file (repeat for several queries)")
    parser.add_argument("--model", help="the HySAC that made the scan (default: the one named in .scan.json)")
    parser.add_argument("--k", type=positive_int, default=10, help="results per query (default: 10)")
    parser.add_argument("--safety", choices=list(SAFETY_MODES), default="keep", help="safety mode (default: keep)")
    parser.add_argument("--gallery", choices=["text", "image"], help="only return items of this modality")
    parser.add_argument("--index-type", choices=list(INDEX_TYPES), default="flat", help="flat (exact, default) or ivf")
    parser.add_argument("--device", default="cpu", help="torch device for embedding the query (default: cpu)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per query")


def run(args: argparse.Namespace) -> int:
    from ..hysac import HySAC
    from ..moderation.scan import ScanOutput, prepare_model
    from ..moderation.search import SearchError, build_index, search

    if args.k < 1:
        raise SearchError(f"--k must be >= 1, got {args.k}.")
    manifest = ScanOutput(args.scan).manifest()
    if manifest is None:
        raise SearchError(f"{args.scan}: no .scan.json; run 'safe-encoders scan ... --embeddings' first.")
    index = build_index(args.scan, index_type=args.index_type)
    model = prepare_model(HySAC.from_pretrained(args.model or manifest["model"]), device=args.device)
    queries = args.text or args.image
    kind = "texts" if args.text else "images"
    results = search(model, index, **{kind: queries}, k=args.k, safety=args.safety, gallery=args.gallery)
    for query, hits in zip(queries, results, strict=True):
        if args.json:
            print(json.dumps({"query": query, "safety": args.safety, "hits": [hit.__dict__ for hit in hits]}))
            continue
        print(f"query: {query}  (safety: {args.safety})")
        for rank, hit in enumerate(hits, 1):
            flag = "  UNSAFE" if hit.unsafe else ""
            print(f"  {rank:>3}  {hit.distance:9.4f}  {hit.modality:<5}  {hit.id}{flag}")
    return 0


COMMAND = Command("search", "nearest items of a scanned collection, with keep / redirect / filter", DESCRIPTION,
                  add_arguments, run)  # fmt: skip
