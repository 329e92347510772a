"""Lorentz top-k at real embedding size: LorentzIndex.search vs the bare FAISS call vs brute force (hysac.top_k).

Clustered random points on the hyperboloid (`--dim` 768: HySAC ViT-L's embedding), `--gallery` items,
`--queries` queries, top-`--k`, on `--threads` threads (default 1). Every call is timed in CPU time of
the process (on one thread, what a busy machine leaves roughly unchanged) after a warm-up, the calls
alternating (index, bare FAISS, brute force, ...); median [min-max] of `--repeat` rounds. Also: the
index's build time and peak RSS rise, its memory per item (FAISS vectors + the float32 embeddings kept
for the float64 re-rank), and top-k agreement with a float64 brute force. Runs against whatever
`safe_encoders` is importable (PYTHONPATH=<an older checkout> for a before / after).

    python benchmarks/bench_search.py [--gallery 100000] [--dim 768] [--queries 100] [--repeat 5]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from pathlib import Path


def _status(field: str) -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field)) * 1024


def _points(n_gallery: int, n_queries: int, dim: int, c: float):
    import torch

    from safe_encoders.hysac import lorentz

    g = torch.Generator().manual_seed(0)
    topics = torch.randn(500, dim, generator=g) * (1.5 / dim**0.5)  # clustered like real embeddings
    tangent = topics[torch.randint(0, 500, (n_gallery,), generator=g)]
    tangent += torch.randn(n_gallery, dim, generator=g) * (0.5 / dim**0.5)
    gallery = lorentz.expmap0(tangent, c)
    near = tangent[torch.randint(0, n_gallery, (n_queries,), generator=g)]
    queries = lorentz.expmap0(near + torch.randn(n_queries, dim, generator=g) * (0.3 / dim**0.5), c)
    return gallery, queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gallery", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import faiss
    import torch

    import safe_encoders
    from safe_encoders.hysac import top_k

    try:
        from safe_encoders.moderation.search import LorentzIndex, augment_queries
    except ImportError:  # a checkout from before search moved to moderation/
        from safe_encoders.hysac.search import LorentzIndex, augment_queries

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    c = 1.0
    gallery, queries = _points(args.gallery, args.queries, args.dim, c)
    n = args.gallery
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    rss, start = _status("VmRSS"), time.process_time()
    index = LorentzIndex(gallery, [str(i) for i in range(n)], ["image"] * n, [False] * n, curvature=c)
    build, build_peak = time.process_time() - start, _status("VmHWM") - rss
    calls = {
        "LorentzIndex.search": lambda: index.search(queries, k=args.k),
        "bare FAISS search": lambda: index.faiss_index.search(augment_queries(queries, c), args.k),
        "top_k (brute force)": lambda: top_k(queries, gallery, c, args.k),
    }
    with contextlib.suppress(ImportError):
        from safe_encoders.hysac import Gallery

        prepared = Gallery.of(gallery, c)
        calls["top_k, prepared Gallery"] = lambda: top_k(queries, prepared, c, args.k)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():  # warm-up
        call()
    for _ in range(args.repeat):
        for name, call in calls.items():
            start = time.process_time()
            call()
            times[name].append(time.process_time() - start)
    exact = top_k(queries.double(), gallery.double(), c, args.k).indices.tolist()
    hits = index.search(queries, k=args.k)
    agreement = sum(len({h.row for h in row} & set(e)) for row, e in zip(hits, exact, strict=True)) / (
        args.queries * args.k
    )
    per_point = (index.faiss_index.ntotal * index.faiss_index.d * 4 + index.embeddings.numel() * 4) / n
    print(f"code: {Path(safe_encoders.__file__).parent.parent}; {n} items, dim {args.dim}, {args.queries} queries, "
          f"top-{args.k}, {args.threads} thread(s), median [min-max] of {args.repeat}")  # fmt: skip
    print(
        f"  build: {build * 1000:.0f} ms CPU, peak RSS rise {build_peak / n:.0f} B per item; index + embeddings "
        f"kept: {per_point:.0f} B per item; top-{args.k} agreement with float64 brute force {agreement:.3f}"
    )
    base = statistics.median(times["LorentzIndex.search"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:26s} {median * 1000:9.1f} ms CPU [{min(values) * 1000:.1f}-{max(values) * 1000:.1f}]  "
              f"{median / base:5.2f}x the index")  # fmt: skip


if __name__ == "__main__":
    main()
