"""Safe-CLIP losses as pure functions of embeddings (REFERENCE.md section 3).

Naming follows the reference: S = safe text, U = unsafe text, V = safe image, G = unsafe image;
``ref_*`` are embeddings from the frozen original encoders (T0, V0). Every function normalises its
inputs itself, so raw projected features can be passed in.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

DEFAULT_LOGIT_SCALE = 100.0
"""Fixed InfoNCE logit scale of Safe-CLIP (temperature 0.01)."""

TERM_NAMES: tuple[str, ...] = (
    "cos_text_safe",
    "cos_text_unsafe",
    "cos_image_safe",
    "cos_image_unsafe",
    "nce_text_safe",
    "nce_text_unsafe",
    "nce_image_safe",
    "nce_image_unsafe",
)
"""The eight terms in the order of the authors' weight vector."""


def info_nce(a: torch.Tensor, b: torch.Tensor, logit_scale: float | torch.Tensor = DEFAULT_LOGIT_SCALE) -> torch.Tensor:
    """Symmetric InfoNCE between row-aligned batches ``a`` and ``b`` (row i of each is a positive pair).

    Returns the mean of the a->b and b->a cross-entropies over ``logit_scale * cos(a_i, b_j)``. The
    scale is fixed for Safe-CLIP; plain CLIP pre-training passes its learned scale tensor.
    """
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(
            f"info_nce expects two (batch, dim) tensors of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    logits = logit_scale * F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
    labels = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def cosine_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``1 - cos(a_i, b_i)`` (positives only)."""
    if a.shape != b.shape:
        raise ValueError(f"cosine_loss expects tensors of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return (1.0 - F.cosine_similarity(a, b, dim=-1)).mean()


def check_loss_weights(weights: Any) -> None:
    """Raise ``ValueError`` unless every field of the weights dataclass is a finite number >= 0 and one is > 0."""
    values = [getattr(weights, f.name) for f in fields(weights)]
    name = type(weights).__name__
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    if not numbers or any(v < 0 for v in values):
        raise ValueError(f"{name} must be finite and non-negative, got {asdict(weights)}")
    if sum(values) <= 0:
        raise ValueError(f"{name} must not all be zero")


@dataclass(frozen=True)
class SafeClipWeights:
    """Weights of the eight Safe-CLIP terms; defaults are the authors' (0.1, 0.1, 0.1, 0.2, 0.25 x3, 0.5).

    They are normalised to sum 1 when the loss is computed (see :meth:`normalised`).
    """

    cos_text_safe: float = 0.1
    cos_text_unsafe: float = 0.1
    cos_image_safe: float = 0.1
    cos_image_unsafe: float = 0.2
    nce_text_safe: float = 0.25
    nce_text_unsafe: float = 0.25
    nce_image_safe: float = 0.25
    nce_image_unsafe: float = 0.5

    def __post_init__(self) -> None:
        check_loss_weights(self)

    def normalised(self) -> dict[str, float]:
        """The weights divided by their sum, keyed by term name."""
        total = sum(getattr(self, name) for name in TERM_NAMES)
        return {name: getattr(self, name) / total for name in TERM_NAMES}


def safe_clip_terms(
    text_safe: torch.Tensor,
    text_unsafe: torch.Tensor,
    image_safe: torch.Tensor,
    image_unsafe: torch.Tensor,
    ref_text_safe: torch.Tensor,
    ref_image_safe: torch.Tensor,
    logit_scale: float = DEFAULT_LOGIT_SCALE,
) -> dict[str, torch.Tensor]:
    """The eight unweighted Safe-CLIP terms.

    Arguments are T(S), T(U), V(V), V(G) from the encoders being trained and T0(S), V0(V) from the
    frozen originals, all ``(batch, dim)`` and row-aligned (row i is one quadruplet).
    """
    ref_text_safe = ref_text_safe.detach()
    ref_image_safe = ref_image_safe.detach()
    return {
        # preservation, cosine: T(S) ~ T0(S), V(V) ~ V0(V)
        "cos_text_safe": cosine_loss(text_safe, ref_text_safe),
        # redirection, cosine: T(U) -> T0(S), V(G) -> V0(V)
        "cos_text_unsafe": cosine_loss(text_unsafe, ref_text_safe),
        "cos_image_safe": cosine_loss(image_safe, ref_image_safe),
        "cos_image_unsafe": cosine_loss(image_unsafe, ref_image_safe),
        # contrastive: preservation T(S)-V0(V), V(V)-T0(S); redirection T(U)-V0(V), V(G)-T0(S)
        "nce_text_safe": info_nce(text_safe, ref_image_safe, logit_scale),
        "nce_text_unsafe": info_nce(text_unsafe, ref_image_safe, logit_scale),
        "nce_image_safe": info_nce(image_safe, ref_text_safe, logit_scale),
        "nce_image_unsafe": info_nce(image_unsafe, ref_text_safe, logit_scale),
    }


def safe_clip_loss(
    text_safe: torch.Tensor,
    text_unsafe: torch.Tensor,
    image_safe: torch.Tensor,
    image_unsafe: torch.Tensor,
    ref_text_safe: torch.Tensor,
    ref_image_safe: torch.Tensor,
    weights: SafeClipWeights | None = None,
    logit_scale: float = DEFAULT_LOGIT_SCALE,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted Safe-CLIP total (weights normalised to sum 1) and the unweighted terms, detached."""
    terms = safe_clip_terms(
        text_safe, text_unsafe, image_safe, image_unsafe, ref_text_safe, ref_image_safe, logit_scale
    )
    w = (weights or SafeClipWeights()).normalised()
    total = sum(w[name] * terms[name] for name in TERM_NAMES)
    return total, {name: value.detach() for name, value in terms.items()}
