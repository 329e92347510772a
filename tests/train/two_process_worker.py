"""One process of the 2-process training test (``tests/train/test_two_processes.py``), launched by a
distributed launcher: ``python -m torch.distributed.run --nproc_per_node 2 two_process_worker.py OUT [CRASH_AT]``.

Trains the tiny synthetic CLIP through ``run_training`` (accelerate, gloo on the CPU); with CRASH_AT every
process ends abruptly (``os._exit``, as a kill) right after that optimizer step.
"""

import os
import sys

import torch


def main() -> None:
    out = sys.argv[1]
    crash_at = int(sys.argv[2]) if len(sys.argv) > 2 else None
    torch.set_num_threads(1)
    from eval.data.synthetic import SyntheticWorld, build_image_processor, build_tokenizer
    from train.checkpoints import seed_everything
    from train.config import load_config
    from train.data import EncodedQuadruplets, QuadrupletCollator, stack_encoded
    from train.loop import run_training
    from train.model import SafeClipModel
    from train.tiny_clip import tiny_clip

    tokenizer = build_tokenizer(max_length=32)
    collator = QuadrupletCollator(tokenizer, build_image_processor(32))
    train_set = EncodedQuadruplets(SyntheticWorld(32, seed=1), collator)
    val_set = EncodedQuadruplets(SyntheticWorld(8, seed=2, distinct=True), collator)
    cfg = load_config(
        None,
        [
            f"output_dir={out}",
            "data.batch_size=4",
            "optim.epochs=2",
            "progress=false",
            "lora.rank=2",
            "lora.alpha=2",
            "lora.dropout=0.2",
            "optim.lr=1e-2",
            "save_every_steps=2",
            "keep_checkpoints=2",
            "tensorboard=false",
        ],
    )
    seed_everything(cfg.seed)
    text, vision = tiny_clip(tokenizer, 32, width=16, layers=1, projection_dim=16)
    model = SafeClipModel(text, vision, cfg.lora)

    def on_step(step: int) -> None:
        if step == crash_at:
            os._exit(9)

    run_training(cfg, model, train_set, val_set, stack_encoded, on_step=on_step)


if __name__ == "__main__":
    main()
