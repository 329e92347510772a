"""Frozen references for Safe-CLIP: cached embeddings vs adapter-disabled forwards vs a deep copy.

Prints time per training step and peak resident memory of each variant, measured side by side in
one run (each variant in its own subprocess so that peak memory is its own), and the ratios.

    python benchmarks/bench_train_references.py                  # tiny CLIP, batch 64
    python benchmarks/bench_train_references.py --size vit-l     # real ViT-L/14 config, random weights, batch 2
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "hub" / "openai__clip-vit-large-patch14"
VARIANTS = ("cached", "adapter-disabled", "deep-copy")


def _build(size: str, batch_size: int):
    import torch
    from transformers import (
        CLIPConfig,
        CLIPTextModelWithProjection,
        CLIPVisionModelWithProjection,
    )

    from train.config import LoraSettings
    from train.model import SafeClipModel

    torch.manual_seed(0)
    if size == "vit-l":
        if not FIXTURE.exists():
            raise SystemExit(f"--size vit-l needs the real config in {FIXTURE}")
        cfg = CLIPConfig.from_pretrained(FIXTURE)
        text = CLIPTextModelWithProjection(cfg.text_config)
        vision = CLIPVisionModelWithProjection(cfg.vision_config)
        seq, image = 77, cfg.vision_config.image_size
        vocab = cfg.text_config.vocab_size
    else:
        from eval.data.synthetic import build_tokenizer
        from train.tiny_clip import tiny_clip

        tok = build_tokenizer(24)
        text, vision = tiny_clip(tok, 32, width=64, layers=2, heads=4, projection_dim=64)
        seq, image, vocab = 24, 32, len(tok)
    model = SafeClipModel(text, vision, LoraSettings())
    ids = torch.randint(2, vocab - 2, (batch_size, seq))
    ids[:, -1] = text.config.eos_token_id if text.config.eos_token_id < vocab else vocab - 1
    batch = {
        "index": torch.arange(batch_size),
        "safe_input_ids": ids,
        "safe_attention_mask": torch.ones_like(ids),
        "unsafe_input_ids": ids.flip(0),
        "unsafe_attention_mask": torch.ones_like(ids),
        "safe_pixel_values": torch.randn(batch_size, 3, image, image),
        "unsafe_pixel_values": torch.randn(batch_size, 3, image, image),
    }
    return model, batch


def run_variant(variant: str, size: str, batch_size: int, steps: int) -> dict[str, float]:
    import torch

    from train.losses import safe_clip_loss
    from train.model import CachedReferences, LiveReferences

    model, batch = _build(size, batch_size)
    if variant == "cached":
        refs = CachedReferences.build(model, [batch], batch_size)
    elif variant == "adapter-disabled":
        refs = LiveReferences(model)
    else:
        frozen_text = copy.deepcopy(model.text.get_base_model()).requires_grad_(False)
        frozen_vision = copy.deepcopy(model.vision.get_base_model()).requires_grad_(False)
        # the copies must be taken before training: they are the original weights (LoRA B = 0 now)
        refs = LiveReferences(
            model,
            lambda b: (
                frozen_text(input_ids=b["safe_input_ids"], attention_mask=b["safe_attention_mask"]).text_embeds,
                frozen_vision(pixel_values=b["safe_pixel_values"]).image_embeds,
            ),
        )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3)
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        emb = model(batch)
        ref_text, ref_image = refs(batch)
        loss, _ = safe_clip_loss(**emb, ref_text_safe=ref_text, ref_image_safe=ref_image)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step:  # the first step warms up
            times.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"step_s": sorted(times)[len(times) // 2], "peak_rss_mb": peak_mb, "loss": float(loss)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "vit-l"), default="tiny")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    batch_size = args.batch_size or (2 if args.size == "vit-l" else 64)
    steps = args.steps or (2 if args.size == "vit-l" else 10)
    if args.variant:
        sys.path.insert(0, str(ROOT))
        print(json.dumps(run_variant(args.variant, args.size, batch_size, steps)))
        return
    results = {}
    for variant in VARIANTS:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--size",
                args.size,
                "--batch-size",
                str(batch_size),
                "--steps",
                str(steps),
                "--variant",
                variant,
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    base = results["cached"]
    print(f"Safe-CLIP step, {args.size}, batch {batch_size}, median of {steps} steps (CPU)")
    print(f"{'references':<18}{'s/step':>10}{'x cached':>10}{'peak RSS MB':>14}{'x cached':>10}")
    for variant, r in results.items():
        print(
            f"{variant:<18}{r['step_s']:>10.3f}{r['step_s'] / base['step_s']:>10.2f}"
            f"{r['peak_rss_mb']:>14.0f}{r['peak_rss_mb'] / base['peak_rss_mb']:>10.2f}"
        )


if __name__ == "__main__":
    main()
