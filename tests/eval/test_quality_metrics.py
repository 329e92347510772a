"""FID and CLIP score (eval/quality/metrics.py) against closed forms and hand computations, on injected tiny
feature extractors and a tiny CLIP (nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import linalg

from eval.quality.metrics import CLIPScorer, FIDMetric, FIDSettings, QualityError, prepare_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ChannelMeans(torch.nn.Module):
    """Features = the mean pixel value of each channel (3-d): a plain solid-colour image encodes its features."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        assert x.dtype == torch.uint8
        return x.float().mean(dim=(2, 3))


SETTINGS = FIDSettings(image_size=4, batch_size=64, extractor="channel-means")


def solid_images(mean, cov, n: int, seed: int) -> list[Image.Image]:
    """``n`` solid-colour images whose RGB values are Gaussian samples (rounded, clipped to 0..255)."""
    rgb = np.random.default_rng(seed).multivariate_normal(mean, cov, size=n)
    rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return [Image.new("RGB", (6, 5), tuple(int(v) for v in c)) for c in rgb]


def features(images) -> np.ndarray:
    return np.array([np.asarray(im, dtype=np.float64).reshape(-1, 3)[0] for im in images])


def closed_form(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance of the Gaussians fitted to two feature sets (unbiased covariances), by scipy's sqrtm."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(ca @ cb).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca + cb - 2 * root))


def save_folder(images, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        im.save(folder / f"{i:05d}.png")
    return folder


@pytest.fixture(scope="module")
def gaussian_sets(tmp_path_factory):
    real_cov = [[400.0, 120.0, 0.0], [120.0, 100.0, -30.0], [0.0, -30.0, 225.0]]
    real = solid_images([100, 150, 80], real_cov, 3000, seed=0)
    fake = solid_images([110, 140, 90], np.diag([100.0, 225.0, 64.0]), 2500, seed=1)
    # The folder (the command's real side) holds a subset: writing and reading PNGs is the slow part.
    folder = save_folder(real[:300], tmp_path_factory.mktemp("real"))
    return real, fake, folder


def test_fid_matches_the_closed_form_of_two_gaussian_feature_sets(gaussian_sets, tmp_path):
    real, fake, _ = gaussian_sets
    metric = FIDMetric(ChannelMeans(), settings=SETTINGS)
    assert metric.update(real, real=True) == len(real) == metric.real_count()
    got = metric.fid(fake)
    # Exactly the closed form on the realised features (torchmetrics' eigenvalue route vs scipy's sqrtm) ...
    assert got == pytest.approx(closed_form(features(real), features(fake)), rel=1e-6)
    # ... and close to the population value ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^1/2) (sampling noise only).
    s1 = np.array([[400.0, 120.0, 0.0], [120.0, 100.0, -30.0], [0.0, -30.0, 225.0]])
    s2 = np.diag([100.0, 225.0, 64.0])
    population = 100 + 100 + 100 + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert got == pytest.approx(population, rel=0.05)


def test_fid_of_a_set_against_itself_is_zero(gaussian_sets, tmp_path):
    real, _, folder = gaussian_sets
    metric = FIDMetric(ChannelMeans(), settings=SETTINGS)
    assert metric.load_real(folder, None) is False
    assert metric.real_count() == 300
    assert abs(metric.fid(real[:300])) < 1e-3  # features of scale ~10^2: a wrong side or resize would be far off


def test_real_statistics_are_cached_keyed_by_folder_and_extractor(gaussian_sets, tmp_path):
    real, fake, folder = gaussian_sets
    cache = tmp_path / "cache"
    first = FIDMetric(ChannelMeans(), settings=SETTINGS)
    assert first.load_real(folder, cache) is False
    expected = first.fid(fake)
    assert expected == pytest.approx(closed_form(features(real[:300]), features(fake)), rel=1e-6)

    extractor = ChannelMeans()
    second = FIDMetric(extractor, settings=SETTINGS)
    calls_at_start = extractor.calls  # torchmetrics probes the extractor once for its width
    assert second.load_real(folder, cache) is True
    assert extractor.calls == calls_at_start  # no real image went through the extractor
    assert second.fid(fake) == pytest.approx(expected, rel=1e-9)

    # Another extractor name, or another resize, is another key: recomputed, not read.
    other = FIDMetric(ChannelMeans(), settings=FIDSettings(image_size=4, extractor="other"))
    assert other.load_real(folder, cache) is False
    assert (
        FIDMetric(ChannelMeans(), settings=FIDSettings(image_size=5, extractor="channel-means")).load_real(
            folder, cache
        )
        is False
    )
    # A changed folder is another key too.
    extra = save_folder(real[:3], tmp_path / "more")
    (extra / "00000.png").rename(folder.parent / "added.png")
    assert len(list(cache.glob("*.safetensors"))) == 3

    # A damaged cache file is an error, never silently used.
    for path in cache.glob("*.safetensors"):
        path.write_bytes(b"not a safetensors file")
    with pytest.raises(QualityError, match="unreadable FID statistics"):
        FIDMetric(ChannelMeans(), settings=SETTINGS).load_real(folder, cache)


def test_fid_resizes_both_sides_alike_with_a_center_crop():
    # A 9x3 strip: red | green | blue thirds. Center-cropped to a square it is all green; squashed it is not.
    strip = Image.new("RGB", (9, 3))
    for x in range(9):
        for y in range(3):
            strip.putpixel((x, y), [(255, 0, 0), (0, 255, 0), (0, 0, 255)][x // 3])
    cropped = prepare_image(strip, 4, center_crop=True)
    assert cropped.shape == (3, 4, 4) and cropped.dtype == torch.uint8
    assert cropped[1].min() == 255 and cropped[0].max() == 0
    squashed = prepare_image(strip, 4, center_crop=False)
    assert squashed[0].max() > 0


def test_fid_refuses_what_it_cannot_compute(tmp_path):
    metric = FIDMetric(ChannelMeans(), settings=SETTINGS)
    with pytest.raises(QualityError, match="not a folder"):
        metric.load_real(tmp_path / "missing")
    one = save_folder([Image.new("RGB", (4, 4))], tmp_path / "one")
    with pytest.raises(QualityError, match="at least 2 images"):
        metric.load_real(one)
    (one / "broken.png").write_bytes(b"no png")
    with pytest.raises(QualityError, match="unreadable image"):
        metric.load_real(one)
    with pytest.raises(QualityError, match="load_real first"):
        metric.fid([Image.new("RGB", (4, 4))] * 3)
    with pytest.raises(QualityError, match=r"own FIDSettings\.extractor"):
        FIDMetric(ChannelMeans())


# --------------------------------------------------------------------------- CLIP score


def hand_cosines(folder: Path, images, captions) -> np.ndarray:
    """Cosines of CLIP image and caption embeddings, computed step by step from the model's parts."""
    from transformers import CLIPModel

    from tests.tiny_models import clip_tokenizer

    model = CLIPModel.from_pretrained(folder).eval()
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    pixels = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1) for im in images])
    pixels = (pixels / 255 - mean) / std  # 30 px already: resize and crop are the identity
    tok = clip_tokenizer()(captions, padding=True, return_tensors="pt")
    with torch.no_grad():
        img = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        txt = model.text_projection(model.text_model(**tok).pooler_output)
    img = img / img.norm(dim=-1, keepdim=True)
    txt = txt / txt.norm(dim=-1, keepdim=True)
    return (img * txt).sum(-1).numpy()


def test_clip_score_matches_a_hand_computation_on_a_tiny_clip(tiny_clip_score_dir, photos):
    images = [p.resize((30, 30), Image.Resampling.BICUBIC) for p in photos]
    captions = ["an astronaut in a white suit", "a cat", "a cup of coffee on a saucer"]
    cos = hand_cosines(tiny_clip_score_dir, images, captions)
    scorer = CLIPScorer(str(tiny_clip_score_dir), batch_size=2)  # a local folder; batches of 2 over 3 pairs
    assert scorer.score(images, captions) == pytest.approx(max(100 * cos.mean(), 0.0), abs=1e-3)
    # Order matters: pairing each image with another caption gives another score.
    shifted = hand_cosines(tiny_clip_score_dir, images, captions[1:] + captions[:1])
    assert scorer.score(images, captions[1:] + captions[:1]) == pytest.approx(max(100 * shifted.mean(), 0), abs=1e-3)


def test_clip_score_clips_the_mean_at_zero(tiny_clip_score_dir, photos):
    """torchmetrics' definition clips the mean of 100 cos at 0, not each image's (they differ when signs mix)."""
    images = [p.resize((30, 30), Image.Resampling.BICUBIC) for p in photos]
    scorer = CLIPScorer(str(tiny_clip_score_dir))
    captions = ["an astronaut in a white suit", "a cat", "a cup of coffee on a saucer"]
    cos = hand_cosines(tiny_clip_score_dir, images, captions)
    assert cos.min() < 0 < cos.mean()  # mixed signs, positive mean
    got = scorer.score(images, captions)
    assert got == pytest.approx(100 * cos.mean(), abs=1e-3)
    assert abs(got - 100 * np.clip(cos, 0, None).mean()) > 1  # clipping each image's cosine would show
    negative = hand_cosines(tiny_clip_score_dir, images, [captions[0]] * 3)
    assert negative.mean() < 0
    assert scorer.score(images, [captions[0]] * 3) == 0.0


def test_clip_score_refuses_unequal_lengths_and_bad_models(tiny_clip_score_dir, photos, tmp_path):
    scorer = CLIPScorer(str(tiny_clip_score_dir))
    with pytest.raises(ValueError):
        scorer.score(photos, ["only one caption"])
    with pytest.raises(QualityError, match="cannot load a CLIP"):
        CLIPScorer(str(tmp_path / "nothing-here"))
