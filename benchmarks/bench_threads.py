"""Wall time of one search workload with and without a competing CPU-bound process, default vs configured threads.

The workload (one fresh process per run): a Lorentz index over `--gallery` 768-dim items, then
`--rounds` rounds of (a 100-query search: FAISS + the float64 re-rank in torch; a one-item forward
through a ViT-B-sized stack of 12 linear layers of width 768). Two thread set-ups:

- default: what a process gets without the CLI (OpenMP's default active wait, torch and FAISS on all
  usable CPUs);
- configured: as `safe-encoders` runs (`OMP_WAIT_POLICY=PASSIVE`, `KMP_BLOCKTIME=0` in the environment
  before torch starts, then `safe_encoders.threads.configure_threads()`).

Each with the machine as it is, and with `--competitors` extra processes spinning on the CPU (default
one per usable CPU). Runs alternate between set-ups; median [min-max] of `--repeat`.

    python benchmarks/bench_threads.py [--gallery 20000] [--rounds 20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _child(configured: bool, gallery: int, rounds: int) -> None:
    import faiss
    import torch

    from safe_encoders.hysac import lorentz
    from safe_encoders.moderation.search import LorentzIndex
    from safe_encoders.threads import configure_threads

    threads = configure_threads() if configured else torch.get_num_threads()
    g = torch.Generator().manual_seed(0)
    points = lorentz.expmap0(torch.randn(gallery, 768, generator=g) * 0.05, 1.0)
    queries = lorentz.expmap0(torch.randn(100, 768, generator=g) * 0.05, 1.0)
    index = LorentzIndex(points, [str(i) for i in range(gallery)], ["image"] * gallery, [False] * gallery,
                         curvature=1.0)  # fmt: skip
    layers = torch.nn.Sequential(*[torch.nn.Linear(768, 768) for _ in range(12)]).eval()
    item = torch.randn(50, 768)  # one image: 50 tokens
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(rounds):
            index.search(queries, k=10)
            layers(item)
    print(json.dumps({"seconds": time.perf_counter() - start, "threads": threads,
                      "faiss_threads": faiss.omp_get_max_threads()}))  # fmt: skip


def _run(configured: bool, args: argparse.Namespace) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "KMP_BLOCKTIME", "OMP_NUM_THREADS")}
    if configured:
        env.update(OMP_WAIT_POLICY="PASSIVE", KMP_BLOCKTIME="0")  # what safe_encoders/__init__ sets for the CLI
    env["PYTHONPATH"] = str(ROOT)
    command = [sys.executable, __file__, "--child", str(int(configured)), str(args.gallery), str(args.rounds)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gallery", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--competitors", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    print(f"{time.strftime('%H:%M:%S')} load average {os.getloadavg()[0]:.1f}, cpus {sorted(os.sched_getaffinity(0))}")
    results: dict[tuple[str, str], list[dict]] = {}
    for busy in ("as is", f"+{args.competitors} spinning"):
        spinners = []
        if busy != "as is":
            spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.competitors)]
        try:
            for _ in range(args.repeat):
                for setup, configured in (("default", False), ("configured", True)):
                    results.setdefault((busy, setup), []).append(_run(configured, args))
        finally:
            for spinner in spinners:
                spinner.kill()
                spinner.wait()
    print(f"{args.rounds} rounds of (100-query search over {args.gallery} items + a one-item 12-layer forward); "
          f"wall seconds, median [min-max] of {args.repeat}")  # fmt: skip
    for (busy, setup), runs in results.items():
        seconds = [r["seconds"] for r in runs]
        print(f"  {busy:14s} {setup:10s} threads {runs[0]['threads']} (faiss {runs[0]['faiss_threads']}): "
              f"{statistics.median(seconds):7.2f} s [{min(seconds):.2f}-{max(seconds):.2f}]")  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(bool(int(sys.argv[2])), int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
