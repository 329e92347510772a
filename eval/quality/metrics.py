"""Image-quality metrics of a generation run: FID against a folder of real images, and CLIP score.

Both are torchmetrics' implementations:

- FID: :class:`torchmetrics.image.fid.FrechetInceptionDistance`. By default its feature extractor is the
  TensorFlow-compatible Inception v3 (2048-d pool features) of torch-fidelity, the network of the original FID
  code, so numbers compare with the literature; any ``torch.nn.Module`` mapping a uint8 ``(N, 3, S, S)`` batch to
  ``(N, D)`` features can be injected instead (the tests use a tiny one, nothing is downloaded).
- CLIP score: :class:`torchmetrics.multimodal.CLIPScore`, ``max(100 * mean cos(E_image, E_caption), 0)``.

Resizing (both FID sides alike): each image is converted to RGB, center-cropped to a square (generated images
are square already; real COCO photos are not) and resized to ``image_size`` x ``image_size`` (299, Inception's
input) with PIL's antialiased bicubic filter, then handed over as uint8. Inception therefore sees 299 px images
and its own resize is the identity.

The real side's sufficient statistics (feature sum, sum of outer products, count) are cached on disk, keyed by
the folder's listing (names, sizes, modification times), the extractor and the resizing, so a second condition,
or a second run against the same folder, does not recompute them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from eval.errors import EvalError, require
from safe_encoders.atomic import atomic_write

logger = logging.getLogger("safe_encoders.eval")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
INCEPTION_ID = "inception-v3-compat-2048"
DEFAULT_CLIP_SCORE_MODEL = "openai/clip-vit-large-patch14"
STATS_FORMAT = 1


class QualityError(EvalError, ValueError):
    """A quality metric cannot be computed as asked (missing or unreadable images, a bad statistics file...)."""


@dataclass(frozen=True)
class FIDSettings:
    """How images become FID features: the resize both sides share, the extractor's identity, the batch size."""

    image_size: int = 299
    center_crop: bool = True
    batch_size: int = 50
    extractor: str = INCEPTION_ID
    """Names the feature extractor in the statistics cache key: change it whenever the extractor changes."""

    def __post_init__(self) -> None:
        if self.image_size < 2 or self.batch_size < 1:
            raise QualityError(
                f"FID image size must be >= 2 and batch size >= 1, got {self.image_size}, {self.batch_size}"
            )


def prepare_image(image: Image.Image, size: int, center_crop: bool = True) -> torch.Tensor:
    """An image as the FID extractor takes it: RGB, optionally center-cropped square, bicubic-resized, uint8 CHW."""
    image = image.convert("RGB")
    if center_crop and image.width != image.height:
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def image_files(folder: str | Path) -> list[Path]:
    """The image files under ``folder`` (recursively, sorted), or an error saying why there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise QualityError(f"--real {folder}: not a folder of images")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if len(files) < 2:
        raise QualityError(f"--real {folder}: FID needs at least 2 images, found {len(files)} ({IMAGE_SUFFIXES})")
    return files


def folder_fingerprint(files: Sequence[Path], root: Path, settings: FIDSettings) -> str:
    """A digest of what the real statistics depend on: the files (name, size, mtime), the resize, the extractor."""
    listing = []
    for p in files:
        st = p.stat()
        listing.append((str(p.relative_to(root)), st.st_size, st.st_mtime_ns))
    payload = {"format": STATS_FORMAT, "files": listing, "settings": {**asdict(settings), "batch_size": None}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _open_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except OSError as error:
        raise QualityError(f"{path}: unreadable image ({error})") from error


def _require_inception() -> int:
    """torchmetrics' default extractor (torch-fidelity's Inception, 2048-d), once torch-fidelity imports."""
    require("torch_fidelity", feature="FID with the Inception v3 extractor (pip install 'safe-encoders[fid]')")
    return 2048


class FIDMetric:
    """FID of several generated sets against one real set, the real statistics computed once (and cached).

    ``extractor``: None for torch-fidelity's Inception v3 (``weights``: a local copy of its weight file, else it
    downloads them once), or an ``nn.Module`` mapping uint8 ``(N, 3, S, S)`` to ``(N, D)``; give such a module its
    own ``settings.extractor`` name, which keys the statistics cache.
    """

    def __init__(
        self,
        extractor: torch.nn.Module | None = None,
        *,
        settings: FIDSettings | None = None,
        weights: str | Path | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.settings = settings or FIDSettings()
        if extractor is None and self.settings.extractor != INCEPTION_ID:
            raise QualityError(f"settings name the extractor {self.settings.extractor!r} but none was given")
        if extractor is not None and self.settings.extractor == INCEPTION_ID:
            raise QualityError("an injected FID extractor needs its own FIDSettings.extractor name (the cache key)")
        feature = _require_inception() if extractor is None else extractor
        size = self.settings.image_size
        self.device = torch.device(device)
        # sync_on_compute=False: the main process computes alone, even inside a torch.distributed launch.
        self.metric = FrechetInceptionDistance(
            feature=feature,
            reset_real_features=False,
            input_img_size=(3, size, size),
            feature_extractor_weights_path=None if weights is None else str(weights),
            sync_on_compute=False,
        ).to(self.device)
        self.real_source: str | None = None
        self.real_key: str | None = None
        """The fingerprint of the real images loaded (None until :meth:`load_real`)."""

    # ------------------------------------------------------------------ features

    def _batches(self, images: Iterable[Image.Image]) -> Iterator[torch.Tensor]:
        s = self.settings
        batch: list[torch.Tensor] = []
        for image in images:
            batch.append(prepare_image(image, s.image_size, s.center_crop))
            if len(batch) == s.batch_size:
                yield torch.stack(batch)
                batch = []
        if batch:
            yield torch.stack(batch)

    @torch.no_grad()
    def update(self, images: Iterable[Image.Image], *, real: bool, progress: Callable[[int], Any] | None = None) -> int:
        """Add images to one side; returns how many were added."""
        n = 0
        for batch in self._batches(images):
            self.metric.update(batch.to(self.device), real=real)
            n += len(batch)
            if progress is not None:
                progress(len(batch))
        return n

    # ------------------------------------------------------------------ the real side and its cache

    def real_count(self) -> int:
        return int(self.metric.real_features_num_samples)

    def load_real(self, folder: str | Path, cache_dir: str | Path | None = None, *, progress: bool = False) -> bool:
        """Set the real side to the images of ``folder``; returns True when the statistics came from the cache."""
        folder = Path(folder)
        files = image_files(folder)
        key = folder_fingerprint(files, folder, self.settings)
        self.real_key = key
        cached = Path(cache_dir) / f"real-{key[:32]}.safetensors" if cache_dir is not None else None
        self.metric.reset_real_features = True
        self.metric.reset()
        self.metric.reset_real_features = False
        if cached is not None and cached.is_file():
            self._read_stats(cached, key)
            self.real_source = f"{folder} ({self.real_count()} images, cached statistics {cached.name})"
            return True
        from tqdm.auto import tqdm

        with tqdm(total=len(files), desc="FID real images", disable=not progress, unit="img", mininterval=1.0) as bar:
            self.update((_open_image(p) for p in files), real=True, progress=bar.update)
        if cached is not None:
            self._write_stats(cached, key, folder)
        self.real_source = f"{folder} ({self.real_count()} images)"
        return False

    def _write_stats(self, path: Path, key: str, folder: Path) -> None:
        from safetensors.torch import save_file

        m = self.metric
        tensors = {
            "sum": m.real_features_sum.detach().cpu().contiguous(),
            "cov_sum": m.real_features_cov_sum.detach().cpu().contiguous(),
            "n": m.real_features_num_samples.detach().cpu().reshape(1),
        }
        meta = {"key": key, "folder": str(folder), "settings": json.dumps(asdict(self.settings))}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))

    def _read_stats(self, path: Path, key: str) -> None:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                tensors = {name: fh.get_tensor(name) for name in ("sum", "cov_sum", "n")}
        except Exception as error:  # safetensors raises its own error types for a damaged file
            raise QualityError(f"{path}: unreadable FID statistics ({error}); delete the file to recompute") from error
        m = self.metric
        dim = m.real_features_sum.shape[0]
        ok = (
            meta.get("key") == key
            and tensors["sum"].shape == (dim,)
            and tensors["cov_sum"].shape == (dim, dim)
            and tensors["n"].numel() == 1
            and int(tensors["n"]) >= 2
            and bool(torch.isfinite(tensors["sum"]).all() and torch.isfinite(tensors["cov_sum"]).all())
        )
        if not ok:
            raise QualityError(f"{path}: FID statistics that do not fit this folder / extractor (or are not finite)")
        m.real_features_sum = tensors["sum"].to(self.device, torch.float64)
        m.real_features_cov_sum = tensors["cov_sum"].to(self.device, torch.float64)
        m.real_features_num_samples = tensors["n"].reshape(()).to(self.device, torch.long)

    # ------------------------------------------------------------------ one generated set

    def fid(self, images: Iterable[Image.Image], *, progress: Callable[[int], Any] | None = None) -> float:
        """FID of ``images`` against the real side (which stays loaded for the next set)."""
        if self.real_count() < 2:
            raise QualityError("FID: the real side holds fewer than 2 images (load_real first)")
        self.metric.reset()  # the generated side only (reset_real_features=False)
        n = self.update(images, real=False, progress=progress)
        if n < 2:
            raise QualityError(f"FID needs at least 2 generated images, got {n}")
        value = float(self.metric.compute())
        if not np.isfinite(value):
            raise QualityError(f"FID is not finite ({value}): degenerate features?")
        return value


# --------------------------------------------------------------------------- CLIP score


class _FeatureTensors(torch.nn.Module):
    """A CLIP model whose ``get_image_features`` / ``get_text_features`` return tensors.

    transformers 5 returns a ModelOutput (projection in ``pooler_output``) where torchmetrics (<= 1.9) expects the
    tensor; this is torchmetrics' documented hook for a "CLIP compatible model".
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    @staticmethod
    def _tensor(out: Any) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_image_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._tensor(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._tensor(self.model.get_text_features(*args, **kwargs))


def load_clip(source: str, **hub_kwargs: Any) -> tuple[torch.nn.Module, Any]:
    """A CLIP model and its processor from a Hub id or a local folder (both through ``from_pretrained``)."""
    from transformers import CLIPModel, CLIPProcessor

    try:
        model = CLIPModel.from_pretrained(source, **hub_kwargs).eval()
        processor = CLIPProcessor.from_pretrained(source, **hub_kwargs)
    except OSError as error:
        raise QualityError(f"--clip-model {source!r}: cannot load a CLIP model and processor ({error})") from error
    return model, processor


class CLIPScorer:
    """torchmetrics' CLIP score of image / caption pairs: ``max(100 * mean cos, 0)``, batched."""

    def __init__(
        self,
        model: str | tuple[torch.nn.Module, Any] = DEFAULT_CLIP_SCORE_MODEL,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
        **hub_kwargs: Any,
    ) -> None:
        from torchmetrics.multimodal.clip_score import CLIPScore

        clip, processor = load_clip(model, **hub_kwargs) if isinstance(model, str) else model
        self.name = model if isinstance(model, str) else type(clip).__name__
        self.device = torch.device(device)
        self.batch_size = batch_size
        wrapped = _FeatureTensors(clip)
        self.metric = CLIPScore(model_name_or_path=lambda: (wrapped, processor), sync_on_compute=False).to(self.device)

    @torch.no_grad()
    def score(
        self, images: Iterable[Image.Image], captions: Iterable[str], *, progress: Callable[[int], Any] | None = None
    ) -> float:
        """The CLIP score of the pairs ``zip(images, captions)`` (which must have equal lengths)."""
        self.metric.reset()
        pairs = zip(images, captions, strict=True)
        n = 0
        while True:
            chunk = list(itertools.islice(pairs, self.batch_size))
            if not chunk:
                break
            tensors = [
                torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
                for im, _ in chunk
            ]
            self.metric.update([t.to(self.device) for t in tensors], [c for _, c in chunk])
            n += len(chunk)
            if progress is not None:
                progress(len(chunk))
        if n == 0:
            raise QualityError("CLIP score of no image")
        return float(self.metric.compute())


def default_stats_cache() -> Path:
    """Where real-image statistics are cached by default: ``$XDG_CACHE_HOME/safe_encoders/fid`` (~/.cache/...)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "safe_encoders" / "fid"
