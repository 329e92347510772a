"""What `scan` costs beyond the model, on a folder of JPEGs, with a ViT-B/32-sized HySAC on CPU.

1. items/s of `scan` (decoding, every view, preprocessing, forward, Parquet writes) against the bare
   model forward on the same already-preprocessed batch: the overhead ratio; decoding inline vs in
   `--decode-workers` threads.
2. The cost of judging every view (multi-frame / two-background scoring) on ordinary still JPEGs:
   `views.image_views` against the plain `Image.open(...).convert("RGB")` it replaced, decode only and
   end to end (expected ~1.0x: an opaque still image has one view).

The model is the real `openai/clip-vit-large-patch14` config (tests/fixtures/hub) resized to ViT-B/32
(vision 768 wide, 12 layers, patch 32, 224 px; text 512 wide, 12 layers; projection 512), random weights:
the cost per item is what matters, not the verdicts.

    python benchmarks/bench_scan_overhead.py [--images 64] [--batch-size 32] [--workers 2]
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def vit_b32_hysac(folder: Path) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from safe_encoders.hysac import HySAC, HySACBounds
    from tests.tiny_models import clip_tokenizer

    hub = ROOT / "tests" / "fixtures" / "hub" / "openai__clip-vit-large-patch14"
    config = CLIPConfig.from_pretrained(hub)
    config.text_config.update(dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8))
    config.vision_config.update(dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                     num_attention_heads=12, patch_size=32, image_size=224))  # fmt: skip
    config.projection_dim = 512
    torch.manual_seed(0)
    model = HySAC.from_clip_model(CLIPModel(config).eval(), bounds=HySACBounds({"S": {"up_95": 1}, "V": {"up_95": 1}}))
    model.tokenizer = clip_tokenizer()
    model.image_processor = CLIPImageProcessor()  # its defaults are CLIP's: 224 px, OpenAI mean / std
    return model.save_pretrained(folder)


def jpeg_folder(folder: Path, count: int) -> Path:
    """Smooth random photos (gradients + noise, 480 x 360) saved as JPEG quality 90."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:360, 0:480]
    for i in range(count):
        base = np.stack([(x * rng.uniform(0.2, 0.5) + y * rng.uniform(0.1, 0.4) + rng.uniform(0, 255)) % 256
                         for _ in range(3)], axis=2)  # fmt: skip
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)
    return folder


def timed(function, repeat: int = 2) -> float:
    """Best wall time of `repeat` runs (the machine is shared: the best is the least disturbed)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    import torch
    from PIL import Image

    from safe_encoders.hysac import HySAC, embed_images
    from safe_encoders.moderation import InputSpec, ScanConfig, scan
    from safe_encoders.moderation.views import View, image_views

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = HySAC.from_pretrained(vit_b32_hysac(root / "model")).eval()
        folder = jpeg_folder(root / "photos", args.images)
        paths = sorted(folder.glob("*.jpg"))
        n = len(paths)
        print(f"ViT-B/32-sized random HySAC on CPU ({torch.get_num_threads()} torch threads), {n} JPEGs 480x360, "
              f"batch {args.batch_size}")  # fmt: skip

        pixels = model.image_processor(images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt")
        with torch.no_grad():
            bare = timed(lambda: embed_images(model, pixel_values=pixels["pixel_values"], batch_size=args.batch_size))
        print(f"  bare forward (preprocessed batch): {n / bare:7.1f} items/s")

        runs = iter(range(10**6))

        def command(workers: int) -> None:
            config = ScanConfig(batch_size=args.batch_size, workers=workers, progress=False)
            scan(model, InputSpec(str(folder)), root / f"out-{next(runs)}", config)

        rates = {}
        for workers in (0, args.workers):
            seconds = timed(lambda w=workers: command(w))
            rates[workers] = n / seconds
            label = "inline" if workers == 0 else f"{workers} decode workers"
            print(f"  scan, decoding {label:<17}: {rates[workers]:7.1f} items/s   overhead ratio "
                  f"{bare and (seconds / bare):.2f}x (scan time / bare forward time)")  # fmt: skip

        def plain(value, **_):  # what the scan did before: the first frame, convert("RGB")
            image = Image.open(value)
            image.load()
            return [View(None, image.convert("RGB"))]

        views = timed(lambda: [image_views(str(p)) for p in paths], repeat=3)
        first = timed(lambda: [plain(str(p)) for p in paths], repeat=3)
        print(f"  decode only: every view {n / views:7.1f} items/s, first frame convert('RGB') {n / first:7.1f} "
              f"items/s: {views / first:.2f}x")  # fmt: skip
        whole = timed(lambda: command(0))
        scan_module = importlib.import_module("safe_encoders.moderation.scan")  # the package's `scan` is the function
        original = scan_module.image_views
        scan_module.image_views = plain
        try:
            single = timed(lambda: command(0))
        finally:
            scan_module.image_views = original
        print(f"  scan end to end: every view {n / whole:7.1f} items/s, first frame only {n / single:7.1f} items/s: "
              f"{whole / single:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
