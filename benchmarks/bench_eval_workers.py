"""Two ``python -m eval t2i`` workers on one ``--out`` against one worker doing the same work.

A tiny random SD pipeline (real CLIP tokenizer) generates and classifies (tiny Q16) ``--prompts`` x
``--images`` images. Run 1: one worker process. Run 2: two worker processes started together on a
fresh folder; they split the items by claims in the store (``eval.store.leases``). Printed: images generated
by each worker (their sum must equal the item count: nothing made twice), whether the two reports are
identical, and the wall-time ratio. Each worker runs torch on one thread, so two workers can use two
cores; the ratio includes each process's start-up (imports, model loading).

    python benchmarks/bench_eval_workers.py [--prompts 16] [--images 2] [--steps 8]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def workers(n: int, args: list[str]) -> tuple[float, list[int]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    procs = [
        subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(n)
    ]
    errs = [p.communicate()[1] for p in procs]
    wall = time.perf_counter() - start
    for p, err in zip(procs, errs, strict=True):
        if p.returncode != 0:
            raise SystemExit(err[-3000:])
    return wall, [int(re.search(r"this worker generated (\d+) image", e).group(1)) for e in errs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    opts = parser.parse_args()

    from benchmarks.tiny_t2i import build_tiny_t2i

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = build_tiny_t2i(root, [{"prompt": f"prompt number {i}", "seed": i} for i in range(opts.prompts)])

        def command(out: Path) -> list[str]:
            return [
                sys.executable, "-m", "eval", "t2i", "--model", str(files.sd),
                "--prompts", str(files.prompts),
                "--conditions", "sd", "--images-per-prompt", str(opts.images), "--steps", str(opts.steps),
                "--size", "32", "--batch-size", "1", "--q16-model", str(files.q16_model),
                "--q16-prompts", str(files.q16_prompts), "--rule", "q16", "--paper-reference", "none",
                "--no-progress", "--out", str(out),
            ]  # fmt: skip

        one, made_one = workers(1, command(root / "one"))
        two, made_two = workers(2, command(root / "two"))
        same = (root / "one" / "report.csv").read_bytes() == (root / "two" / "report.csv").read_bytes()
    items = opts.prompts * opts.images
    print(f"{items} items; 1 worker: generated {made_one} in {one:.1f} s")
    print(f"2 workers: generated {made_two} (total {sum(made_two)}, item count {items}) in {two:.1f} s")
    print(f"identical reports: {same}; wall time 2 workers / 1 worker: {two / one:.2f}")


if __name__ == "__main__":
    main()
