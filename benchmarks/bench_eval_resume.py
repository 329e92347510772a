"""Cost of resuming an evaluation run that has nothing left to do, relative to a fresh run.

A tiny random SD pipeline (real CLIP tokenizer) generates and classifies (tiny Q16 + NudeNet)
``--prompts`` x ``--images`` images under two conditions; the same command then runs again on the
same output folder. Both runs go through ``T2IRunner.run`` in this process, so model loading is
included in the fresh run and the resume pays only for checking the store and writing the report.

    python benchmarks/bench_eval_resume.py [--prompts 8] [--images 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--images", type=int, default=2)
    args = parser.parse_args()

    from benchmarks.tiny_t2i import build_tiny_t2i
    from eval.t2i.run import T2IConfig, T2IRunner

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = [{"prompt": f"prompt number {i}", "categories": "violence"} for i in range(args.prompts)]
        files = build_tiny_t2i(root, rows)
        cfg = T2IConfig(
            model=str(files.sd), prompts=str(files.prompts), conditions=["sd", "neg"], out=root / "out",
            images_per_prompt=args.images, steps=2, height=32, width=32, q16_model=str(files.q16_model),
            q16_prompts=str(files.q16_prompts), progress=False,
        )  # fmt: skip
        t0 = time.perf_counter()
        T2IRunner(cfg, shard=(0, 1)).run()
        fresh = time.perf_counter() - t0
        t0 = time.perf_counter()
        T2IRunner(cfg, shard=(0, 1)).run()
        resumed = time.perf_counter() - t0
    n = 2 * args.prompts * args.images
    print(
        f"{n} images: fresh run {fresh:.2f} s, resumed run with nothing to do {resumed:.2f} s "
        f"({resumed / fresh:.3f}x of fresh)"
    )


if __name__ == "__main__":
    main()
