"""FID feature extraction: batched vs one image at a time, and a second condition's cost with the real-image
statistics cached vs recomputed.

No Inception weights can be fetched here, so the extractor is a stand-in of realistic size: a randomly
initialised CLIP ViT-B/32 vision tower (88M parameters, 224 px input) mapping uint8 batches to 768-d pooled
features, run by the same :class:`eval.quality.metrics.FIDMetric` path (crop, bicubic resize, torchmetrics
accumulation). Images are real photos (scikit-image) resized to 512 px, as SD v1.4 makes them.

    python benchmarks/bench_fid.py [--real 48] [--generated 24] [--batch 24]
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
    parser.add_argument("--real", type=int, default=48)
    parser.add_argument("--generated", type=int, default=24)
    parser.add_argument("--batch", type=int, default=24)
    args = parser.parse_args()

    import torch
    from PIL import Image
    from skimage import data
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from eval.quality.metrics import FIDMetric, FIDSettings

    torch.manual_seed(0)
    tower = CLIPVisionModel(CLIPVisionConfig(image_size=224, patch_size=32)).eval()
    mean = torch.tensor([0.481, 0.458, 0.408]).view(1, 3, 1, 1)
    std = torch.tensor([0.269, 0.261, 0.276]).view(1, 3, 1, 1)

    class Extractor(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tower = tower

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.tower(pixel_values=(x.float() / 255 - mean) / std).pooler_output

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.cat()]
    images = [Image.fromarray(photos[i % len(photos)]).resize((512, 512)).rotate(7 * i) for i in range(args.real)]
    generated = images[: args.generated]

    def settings(batch: int) -> FIDSettings:
        return FIDSettings(image_size=224, batch_size=batch, extractor="bench-clip-b32")

    with torch.no_grad():
        one = FIDMetric(Extractor(), settings=settings(1))
        t0 = time.perf_counter()
        one.update(generated, real=False)
        t_one = time.perf_counter() - t0
        batched = FIDMetric(Extractor(), settings=settings(args.batch))
        t0 = time.perf_counter()
        batched.update(generated, real=False)
        t_batched = time.perf_counter() - t0
        print(
            f"FID features of {len(generated)} images: one at a time {t_one:.2f} s, batches of {args.batch} "
            f"{t_batched:.2f} s (batched / one at a time = {t_batched / t_one:.3f})"
        )

        with tempfile.TemporaryDirectory() as tmp:
            real = Path(tmp) / "real"
            real.mkdir()
            for i, im in enumerate(images):
                im.save(real / f"{i:04d}.png")
            cache = Path(tmp) / "cache"
            FIDMetric(Extractor(), settings=settings(args.batch)).load_real(real, cache)  # condition 1 fills it

            t0 = time.perf_counter()
            m = FIDMetric(Extractor(), settings=settings(args.batch))
            m.load_real(real, None)
            m.fid(generated)
            t_recomputed = time.perf_counter() - t0
            t0 = time.perf_counter()
            m = FIDMetric(Extractor(), settings=settings(args.batch))
            assert m.load_real(real, cache)
            m.fid(generated)
            t_cached = time.perf_counter() - t0
    print(
        f"second condition ({len(generated)} generated vs {args.real} real images): real statistics recomputed "
        f"{t_recomputed:.2f} s, cached {t_cached:.2f} s (cached / recomputed = {t_cached / t_recomputed:.3f})"
    )


if __name__ == "__main__":
    main()
