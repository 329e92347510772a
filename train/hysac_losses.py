"""HySAC losses as pure functions of points on the hyperboloid (space components, see
``safe_encoders.hysac.lorentz``).

Naming as in ``train.losses``: S = safe text, U = unsafe text, V = safe image, G = unsafe image; row i
of each batch belongs to quadruplet i.

- Hyperbolic contrastive terms: logits are minus the pairwise Lorentz distances times the (learned,
  exponentiated) logit scale; symmetric cross-entropy, over the pairs (S, V), (U, G), (S, G), (U, V).
- Entailment-cone terms: ``max(0, exterior angle - half aperture)`` of the cone at the more general
  point, averaged over the batch, for S -> V, V -> U and U -> G (cone aperture constant K = 0.1).
  They order the four groups by distance from the root: S < V < U < G.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from safe_encoders.hysac import lorentz
from train.losses import check_loss_weights

CONTRASTIVE_PAIRS: dict[str, tuple[str, str]] = {
    "con_sv": ("text_safe", "image_safe"),
    "con_ug": ("text_unsafe", "image_unsafe"),
    "con_sg": ("text_safe", "image_unsafe"),
    "con_uv": ("text_unsafe", "image_safe"),
}
"""Contrastive term name -> (text batch, image batch)."""

ENTAILMENT_PAIRS: dict[str, tuple[str, str]] = {
    "ent_sv": ("text_safe", "image_safe"),
    "ent_vu": ("image_safe", "text_unsafe"),
    "ent_ug": ("text_unsafe", "image_unsafe"),
}
"""Entailment term name -> (general point, whose cone must hold the specific point)."""

HYSAC_TERM_NAMES: tuple[str, ...] = (*CONTRASTIVE_PAIRS, *ENTAILMENT_PAIRS)


def hyperbolic_contrastive(
    a: torch.Tensor, b: torch.Tensor, curvature: lorentz.Curvature, logit_scale: float | torch.Tensor
) -> torch.Tensor:
    """Symmetric cross-entropy over ``-logit_scale * d(a_i, b_j)`` (row i of ``a`` and ``b`` is a positive pair).

    ``logit_scale`` is the exponentiated scale (e.g. ``exp(model.logit_scale)``), not its log.
    """
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(
            f"hyperbolic_contrastive expects two (batch, dim) tensors of equal shape, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    logits = -lorentz.pairwise_distance(a, b, curvature) * logit_scale
    labels = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def entailment_loss(
    general: torch.Tensor, specific: torch.Tensor, curvature: lorentz.Curvature, k: float = lorentz.CONE_K
) -> torch.Tensor:
    """Mean over rows of ``max(0, exterior_angle(general_i, specific_i) - half_aperture(general_i))``."""
    if general.shape != specific.shape:
        raise ValueError(
            f"entailment_loss expects tensors of equal shape, got {tuple(general.shape)} and {tuple(specific.shape)}"
        )
    return lorentz.cone_violation(general, specific, curvature, k).mean()


@dataclass(frozen=True)
class HySACWeights:
    """Weights of the seven HySAC terms; the total is the plain weighted sum (not normalised).

    Defaults: 1 for each contrastive term, 0.2 for each entailment term (MERU's entailment weight).
    """

    con_sv: float = 1.0
    con_ug: float = 1.0
    con_sg: float = 1.0
    con_uv: float = 1.0
    ent_sv: float = 0.2
    ent_vu: float = 0.2
    ent_ug: float = 0.2

    def __post_init__(self) -> None:
        check_loss_weights(self)


def hysac_terms(
    text_safe: torch.Tensor,
    text_unsafe: torch.Tensor,
    image_safe: torch.Tensor,
    image_unsafe: torch.Tensor,
    curvature: lorentz.Curvature,
    logit_scale: float | torch.Tensor,
    k: float = lorentz.CONE_K,
) -> dict[str, torch.Tensor]:
    """The seven unweighted HySAC terms (keys ``HYSAC_TERM_NAMES``) of row-aligned S, U, V, G points."""
    points = {
        "text_safe": text_safe,
        "text_unsafe": text_unsafe,
        "image_safe": image_safe,
        "image_unsafe": image_unsafe,
    }
    terms = {
        name: hyperbolic_contrastive(points[a], points[b], curvature, logit_scale)
        for name, (a, b) in CONTRASTIVE_PAIRS.items()
    }
    terms.update(
        {name: entailment_loss(points[g], points[s], curvature, k) for name, (g, s) in ENTAILMENT_PAIRS.items()}
    )
    return terms


def hysac_loss(
    text_safe: torch.Tensor,
    text_unsafe: torch.Tensor,
    image_safe: torch.Tensor,
    image_unsafe: torch.Tensor,
    curvature: lorentz.Curvature,
    logit_scale: float | torch.Tensor,
    weights: HySACWeights | None = None,
    k: float = lorentz.CONE_K,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted HySAC total and the unweighted terms, detached."""
    terms = hysac_terms(text_safe, text_unsafe, image_safe, image_unsafe, curvature, logit_scale, k)
    w = asdict(weights or HySACWeights())
    total = sum(w[name] * terms[name] for name in HYSAC_TERM_NAMES)
    return total, {name: value.detach() for name, value in terms.items()}
