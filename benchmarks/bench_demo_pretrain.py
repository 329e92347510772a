"""The demo's pre-training through the training loop (``run_training``, method ``clip``) vs a bare loop doing
the same optimizer steps (same model, data order size, AdamW, loss), side by side in one run.

The loop adds per-step metric records, a checkpoint per epoch (weights, optimizer, RNG states) and accelerate's
wrapping; this prints what that costs on the demo's tiny CLIP.

    python benchmarks/bench_demo_pretrain.py [--epochs 2] [--train-size 2500] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=2500)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from eval.data.synthetic import SyntheticWorld, build_image_processor, build_tokenizer
    from train.data import EncodedQuadruplets, QuadrupletCollator, stack_encoded
    from train.demo_world import DemoSettings, run_config
    from train.loop import run_training
    from train.losses import info_nce
    from train.methods import METHODS
    from train.tiny_clip import tiny_clip

    torch.set_num_threads(args.threads)
    s = DemoSettings(train_size=args.train_size)
    tokenizer, processor = build_tokenizer(s.max_length), build_image_processor(s.image_size)
    data = EncodedQuadruplets(SyntheticWorld(s.train_size, seed=0), QuadrupletCollator(tokenizer, processor))

    def towers():
        torch.manual_seed(0)
        return tiny_clip(tokenizer, s.image_size, width=s.width, layers=s.layers, heads=s.heads, projection_dim=s.width)

    batch_size = 128
    steps = args.epochs * math.ceil(len(data) / batch_size)

    def bare() -> float:
        text, vision = towers()
        log_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        optimizer = torch.optim.AdamW([*text.parameters(), *vision.parameters(), log_scale], lr=2e-3)
        t = data.tensors
        start = time.perf_counter()
        for epoch in range(args.epochs):
            order = torch.randperm(len(data), generator=torch.Generator().manual_seed(epoch))
            for i in range(0, len(data), batch_size):
                idx = order[i : i + batch_size]
                ids = torch.cat([t["safe_input_ids"][idx], t["unsafe_input_ids"][idx]])
                mask = torch.cat([t["safe_attention_mask"][idx], t["unsafe_attention_mask"][idx]])
                pixels = torch.cat([t["safe_pixel_values"][idx], t["unsafe_pixel_values"][idx]])
                loss = info_nce(
                    text(input_ids=ids, attention_mask=mask).text_embeds,
                    vision(pixel_values=pixels).image_embeds,
                    log_scale.exp().clamp(max=100.0),
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return time.perf_counter() - start

    def through_the_loop() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            overrides = [*s.pretrain, f"optim.epochs={args.epochs}", "tensorboard=false"]
            cfg = run_config(Path(tmp), s, False, ["method=clip", *overrides])
            model = METHODS["clip"].build(cfg, *towers(), tokenizer, processor)
            start = time.perf_counter()
            run_training(cfg, model, data, None, stack_encoded, resume=False)
            return time.perf_counter() - start

    bare(), through_the_loop()  # warm-up (imports, allocator)
    t_bare, t_loop = bare(), through_the_loop()
    print(f"demo pre-training, {args.epochs} epochs ({steps} steps of {2 * batch_size} pairs), {args.threads} threads")
    print(f"bare loop: {t_bare:.1f} s; run_training (method clip): {t_loop:.1f} s")
    print(f"ratio run_training / bare loop = {t_loop / t_bare:.2f}")


if __name__ == "__main__":
    main()
