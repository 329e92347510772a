"""Classification throughput of the evaluation rule (Q16 + NudeNet): batched vs one image at a time.

Q16 runs the real CLIP ViT-L/14 vision architecture (config from tests/fixtures/hub, random
weights: the cost is the same as with the published ones) against a (2, 768) prompt array;
NudeNet runs its shipped ONNX model. Both classify the same real photos (scikit-image), resized
to 512 px like SD v1 outputs, first in batches, then one image per call; the ratio of images per
second is printed per classifier and for the pair.

    python benchmarks/bench_eval_classify.py [--images 16] [--batch-size 8] [--tiny]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CLIP_CONFIG = Path(__file__).resolve().parents[1] / "tests/fixtures/hub/openai__clip-vit-large-patch14"


def build_q16(folder: Path, tiny: bool, batch_size: int):
    from transformers import CLIPConfig, CLIPVisionConfig

    from eval.classifiers.q16 import Q16Classifier
    from tests.eval.builders import save_q16_clip

    config = None  # the tests' tiny tower
    if not tiny and (CLIP_CONFIG / "config.json").is_file():
        config = CLIPConfig.from_pretrained(CLIP_CONFIG).vision_config
        config.projection_dim = 768
    save_q16_clip(folder, config)
    width = CLIPVisionConfig.from_pretrained(folder).projection_dim
    prompts = np.random.default_rng(0).standard_normal((2, width)).astype(np.float32)
    return Q16Classifier(folder, prompts, batch_size=batch_size)


def throughput(clf, images, *, batched: bool) -> float:
    start = time.perf_counter()
    if batched:
        clf.classify(images)
    else:
        for im in images:
            clf.classify([im])
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tiny", action="store_true", help="tiny Q16 model (a quick smoke run)")
    args = parser.parse_args()

    from PIL import Image
    from skimage import data

    from eval.classifiers.nudenet import NudeNetClassifier

    photos = [
        Image.fromarray(f()).convert("RGB").resize((512, 512)) for f in (data.astronaut, data.chelsea, data.coffee)
    ]
    images = [photos[i % len(photos)] for i in range(args.images)]
    with tempfile.TemporaryDirectory() as tmp:
        q16 = build_q16(Path(tmp), args.tiny, args.batch_size)
        nude = NudeNetClassifier(batch_size=args.batch_size)
        for clf in (q16, nude):  # warm-up
            clf.classify(images[:2])
        print(f"{args.images} images of 512 px, batch size {args.batch_size}, torch threads {torch.get_num_threads()}")
        total_b = total_s = 0.0
        for clf in (q16, nude):
            b = throughput(clf, images, batched=True)
            s = throughput(clf, images, batched=False)
            total_b += len(images) / b
            total_s += len(images) / s
            print(f"{clf.name:8s} batched {b:7.2f} img/s | one at a time {s:7.2f} img/s | ratio {b / s:.2f}x")
        rb, rs = len(images) / total_b, len(images) / total_s
        print(f"{'q16+nude':8s} batched {rb:7.2f} img/s | one at a time {rs:7.2f} img/s | ratio {rb / rs:.2f}x")


if __name__ == "__main__":
    main()
