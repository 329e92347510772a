"""Scan throughput batched vs one item at a time, and the FAISS Lorentz index vs brute-force distances, on CPU.

1. `scan` over an image folder and a JSONL of texts with a small random HySAC (CLIP-shaped towers,
   random weights: the cost per item is what matters, not the verdicts), `--batch-size 32` vs 1.
   Both runs include decoding, preprocessing and the Parquet writes.
2. Top-k search over `--gallery` clustered random points on the hyperboloid: FAISS flat inner-product index on
   augmented vectors (exact) and IVF (approximate) vs brute force (`hysac.top_k`, all pairwise
   Lorentz distances in torch); agreement = share of the brute-force top-k returned.

On a GPU the scan's batched / one-at-a-time ratio grows (a forward pass of one item leaves the GPU
idle; with batches, decoding becomes the bottleneck, hence several `accelerate` processes or Ray
actors per machine), and brute force in torch on the GPU closes much of the gap to a flat index;
faiss-gpu (or IVF on CPU) matter beyond a few million items.

    python benchmarks/bench_scan_search.py [--images 96] [--texts 192] [--gallery 50000] [--dim 256]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def small_hysac(folder: Path) -> Path:
    """A random HySAC with CLIP-B-like proportions shrunk for a CPU (width 256, 4 layers, 64 px images)."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from safe_encoders.hysac import HySAC, HySACBounds
    from safe_encoders.image_processors import clip_image_processor_class
    from tests.tiny_models import clip_tokenizer

    torch.manual_seed(0)
    tower = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4)
    config = CLIPConfig(
        text_config={**tower, "vocab_size": 49408, "max_position_embeddings": 77},
        vision_config={**tower, "image_size": 64, "patch_size": 16},
        projection_dim=256,
    )
    model = HySAC.from_clip_model(CLIPModel(config).eval(), bounds=HySACBounds({"S": {"up_95": 1}, "V": {"up_95": 1}}))
    model.tokenizer = clip_tokenizer()
    model.image_processor = clip_image_processor_class()(
        size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}
    )
    return model.save_pretrained(folder)


def bench_scan(root: Path, n_images: int, n_texts: int) -> None:
    import torch

    from safe_encoders.hysac import HySAC
    from safe_encoders.moderation.collection import InputSpec
    from safe_encoders.moderation.scan import ScanConfig, scan
    from tests.safe_encoders.moderation.scan_data import png_bytes

    model = HySAC.from_pretrained(small_hysac(root / "model")).eval()
    (root / "images").mkdir()
    for i in range(n_images):
        (root / "images" / f"{i:05d}.png").write_bytes(png_bytes(i, (96, 128)))
    words = ["a", "photo", "of", "the", "red", "city", "at", "night", "with", "two", "dogs", "and", "rain"]
    texts = [" ".join(words[(i + j) % len(words)] for j in range(5 + i % 9)) for i in range(n_texts)]
    (root / "texts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    print(f"scan on CPU ({torch.get_num_threads()} torch threads), random HySAC width 256, 4 layers:")
    for name, spec, n in (("images", InputSpec(str(root / "images")), n_images),
                          ("texts", InputSpec(str(root / "texts.jsonl")), n_texts)):  # fmt: skip
        rates = {}
        for batch in (32, 1):
            start = time.perf_counter()
            scan(model, spec, root / f"out-{name}-{batch}", ScanConfig(batch_size=batch, progress=False))
            rates[batch] = n / (time.perf_counter() - start)
        print(f"  {name:<6} batch 32: {rates[32]:8.1f} items/s   one at a time: {rates[1]:8.1f} items/s   "
              f"ratio {rates[32] / rates[1]:.1f}x")  # fmt: skip


def bench_search(n_gallery: int, dim: int, n_queries: int = 200, k: int = 10) -> None:
    import torch

    from safe_encoders.hysac import lorentz, top_k
    from safe_encoders.moderation.search import LorentzIndex

    g = torch.Generator().manual_seed(0)
    c = 1.0
    # Clustered like real embeddings: 500 topics, items scattered around them, queries near some items.
    topics = torch.randn(500, dim, generator=g) * (1.5 / dim**0.5)
    tangent = topics[torch.randint(0, 500, (n_gallery,), generator=g)] + torch.randn(n_gallery, dim, generator=g) * (
        0.5 / dim**0.5
    )
    gallery = lorentz.expmap0(tangent, c)
    near = tangent[torch.randint(0, n_gallery, (n_queries,), generator=g)]
    queries = lorentz.expmap0(near + torch.randn(n_queries, dim, generator=g) * (0.3 / dim**0.5), c)
    unsafe = (lorentz.root_distance(gallery, c) > 2.0).tolist()
    ids = [str(i) for i in range(n_gallery)]
    print(f"search: {n_queries} queries, top-{k} of {n_gallery} points, dim {dim}, float32, CPU:")
    start = time.perf_counter()
    brute = top_k(queries, gallery, c, k, chunk_size=50).indices
    brute_time = time.perf_counter() - start
    print(f"  brute force (pairwise Lorentz distances, torch): {brute_time * 1000:8.1f} ms")
    for index_type in ("flat", "ivf"):
        start = time.perf_counter()
        index = LorentzIndex(gallery, ids, ["image"] * n_gallery, unsafe, curvature=c, index_type=index_type)
        build = time.perf_counter() - start
        start = time.perf_counter()
        hits = index.search(queries, k=k)
        took = time.perf_counter() - start
        agreement = (
            sum(
                len({hit.row for hit in row} & set(expected.tolist()))
                for row, expected in zip(hits, brute, strict=True)
            )
            / brute.numel()
        )
        print(f"  faiss {index_type:<4} search: {took * 1000:8.1f} ms (build {build * 1000:7.1f} ms)   "
              f"speed-up {brute_time / took:5.1f}x   agreement with brute force {agreement:.4f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--texts", type=int, default=192)
    parser.add_argument("--gallery", type=int, default=50000)
    parser.add_argument("--dim", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench_scan(Path(tmp), args.images, args.texts)
    bench_search(args.gallery, args.dim)


if __name__ == "__main__":
    main()
