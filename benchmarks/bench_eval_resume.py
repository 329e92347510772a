"""Cost of resuming an evaluation run that has nothing left to do, relative to a fresh run.

A tiny random SD pipeline (real CLIP tokenizer) generates and classifies (tiny Q16 + NudeNet)
``--prompts`` x ``--images`` images under two conditions; the same command then runs again on the
same output folder. Both runs go through ``T2IRunner.run`` in this process, so model loading is
included in the fresh run and the resume pays only for checking the store and writing the report.

    python benchmarks/bench_eval_resume.py [--prompts 8] [--images 2]
"""

from __future__ import annotations

import argparse
import csv
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

    from eval.t2i import T2IConfig, T2IRunner
    from tests.eval.builders import build_tiny_sd, save_q16_clip, write_q16_prompts

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_tiny_sd(root / "sd")
        save_q16_clip(root / "clip")
        write_q16_prompts(root / "q16.p")
        with (root / "prompts.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["prompt", "categories"])
            w.writerows([(f"prompt number {i}", "violence") for i in range(args.prompts)])
        cfg = T2IConfig(
            model=str(root / "sd"), prompts=str(root / "prompts.csv"), conditions=["sd", "neg"], out=root / "out",
            images_per_prompt=args.images, steps=2, height=32, width=32, q16_model=str(root / "clip"),
            q16_prompts=str(root / "q16.p"), progress=False,
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
