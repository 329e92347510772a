"""HySAC as an unsafe-content classifier: the score is the distance from the root.

An input is unsafe when its score exceeds the threshold of its modality: by default the bounds'
95th percentile of safe distances (`S.up_95` for texts, `V.up_95` for images); see
`bounds.calibrate_threshold` to derive one from a labelled set instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from . import lorentz
from .bounds import Modality

if TYPE_CHECKING:
    from .model import HySAC


@dataclass(frozen=True)
class Verdicts:
    """Scores (root distances, `(N,)`, CPU float32), `unsafe`, and the threshold used.

    `unsafe = (scores > threshold) | ~isfinite(scores)`: a NaN or infinite score is never "safe".
    """

    scores: torch.Tensor
    unsafe: torch.Tensor
    threshold: float

    def __len__(self) -> int:
        return int(self.scores.shape[0])


@dataclass(frozen=True)
class UnsafeScores:
    """The verdicts per modality; a modality that was not asked for is None."""

    text: Verdicts | None = None
    image: Verdicts | None = None


def score_embeddings(embeddings: torch.Tensor, curvature: lorentz.Curvature, threshold: float) -> Verdicts:
    """Verdicts for points already on the hyperboloid (space components), e.g. from `encode_text`.

    A non-finite score (NaN / Inf) counts as unsafe; a non-finite threshold is refused.
    """
    if isinstance(threshold, bool) or not math.isfinite(float(threshold)):
        raise ValueError(f"score_embeddings: the threshold must be a finite number; got {threshold!r}.")
    scores = lorentz.root_distance(embeddings.detach(), curvature).float().cpu()
    unsafe = (scores > threshold) | ~torch.isfinite(scores)
    return Verdicts(scores=scores, unsafe=unsafe, threshold=float(threshold))


@torch.no_grad()
def embed_texts(model: HySAC, texts: Sequence[str], *, tokenizer: Any = None, batch_size: int = 32) -> torch.Tensor:
    """Tokenise (padding, truncation to the tokenizer's max length) and encode, in batches; `(N, D)`."""
    tokenizer = tokenizer or model.tokenizer
    if tokenizer is None:
        raise ValueError(
            "No tokenizer: HySAC.from_pretrained loads one beside the model or from base_model when it can; "
            "otherwise set model.tokenizer (e.g. CLIPTokenizer.from_pretrained('openai/clip-vit-large-patch14'))."
        )
    chunks = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            list(texts[start : start + batch_size]), padding=True, truncation=True, return_tensors="pt"
        ).to(model.device)
        chunks.append(model.encode_text(batch["input_ids"], batch.get("attention_mask")))
    return torch.cat(chunks) if chunks else torch.empty(0, model.embed_dim)


@torch.no_grad()
def embed_images(
    model: HySAC, images: Any = None, *, pixel_values: torch.Tensor | None = None, image_processor: Any = None,
    batch_size: int = 32,
) -> torch.Tensor:  # fmt: skip
    """Encode images (PIL images, uint8 arrays, or float arrays / tensors in [0, 1]) or ready `pixel_values`."""
    if pixel_values is None:
        processor = image_processor or model.image_processor
        if processor is None:
            raise ValueError(
                "No image processor: set model.image_processor (e.g. CLIPImageProcessor.from_pretrained("
                "'openai/clip-vit-large-patch14')) or pass pixel_values=."
            )
        images = list(images) if isinstance(images, list | tuple) else [images]
        floating = any(_is_float_image(image) for image in images)
        pixel_values = processor(images=images, return_tensors="pt", **({"do_rescale": False} if floating else {}))[
            "pixel_values"
        ]
    chunks = [
        model.encode_image(pixel_values[start : start + batch_size].to(model.device))
        for start in range(0, pixel_values.shape[0], batch_size)
    ]
    return torch.cat(chunks) if chunks else torch.empty(0, model.embed_dim)


def unsafe_score(
    model: HySAC,
    texts: str | Sequence[str] | None = None,
    images: Any = None,
    *,
    pixel_values: torch.Tensor | None = None,
    text_threshold: float | None = None,
    image_threshold: float | None = None,
    tokenizer: Any = None,
    image_processor: Any = None,
    batch_size: int = 32,
) -> UnsafeScores:
    """Score texts and/or images with `model`: root distance per input and `unsafe` at the threshold.

    Args:
        texts: a string or a sequence of strings.
        images: a PIL image / array or a list of them (uint8, or float in [0, 1]); or pass
            `pixel_values` already made by a CLIP image processor.
        text_threshold, image_threshold: override the thresholds from the model's bounds.
        tokenizer, image_processor: override the model's own.
        batch_size: inputs per forward pass.
    """
    if texts is None and images is None and pixel_values is None:
        raise ValueError("unsafe_score: pass texts=, images= or pixel_values=.")
    text = image = None
    curvature = model.curvature.detach()
    if texts is not None:
        texts = [texts] if isinstance(texts, str) else list(texts)
        threshold = _threshold(model, "text", text_threshold)
        text = score_embeddings(
            embed_texts(model, texts, tokenizer=tokenizer, batch_size=batch_size), curvature, threshold
        )
    if images is not None or pixel_values is not None:
        threshold = _threshold(model, "image", image_threshold)
        embeddings = embed_images(
            model, images, pixel_values=pixel_values, image_processor=image_processor, batch_size=batch_size
        )
        image = score_embeddings(embeddings, curvature, threshold)
    return UnsafeScores(text=text, image=image)


def _threshold(model: HySAC, modality: Modality, given: float | None) -> float:
    return float(given) if given is not None else model.threshold(modality)


def _is_float_image(image: Any) -> bool:
    dtype = getattr(image, "dtype", None)
    return dtype is not None and (getattr(dtype, "is_floating_point", False) or getattr(dtype, "kind", "") == "f")
