"""HySAC evaluation: unsafe-content classification by root distance, and retrieval with and without
safety traversal.

Classification (safe vs unsafe, texts S vs U and images V vs G): accuracy at the bounds' threshold
(a point is unsafe when its root distance exceeds it) and the AUROC of the root distance.

Retrieval ranks by minus the Lorentz distance and reuses ``eval.metrics`` (Safe-CLIP Table 2:
T->V, V->T, T*->V+V*, V*->T+T*, the safe counterpart as the ground truth of an unsafe query), once on
the plain embeddings and once with the unsafe queries traversed toward the root
(``safe_encoders.hysac.traverse``: by default the authors' released traversal, ``"geodesic"`` for ours);
the tables are written with ``eval.retrieval.run``'s writers.
The share of *safe* items at top-1 for unsafe queries is reported next to it.

``python -m eval hysac --model NAME=FOLDER ... --out DIR`` (ViSU, or ``--synthetic N`` offline).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from eval.metrics import safe_clip_retrieval
from eval.report.tables import csv_text, markdown_table
from eval.retrieval.run import KS, RetrievalRow, rows_from_metrics, write_retrieval
from safe_encoders.atomic import atomic_write_text
from safe_encoders.hysac import HySACBounds, lorentz, traverse

EMBEDDING_KEYS = ("text_safe", "text_unsafe", "image_safe", "image_unsafe")
TraversalTarget = Literal["query", "gallery"]


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` (higher = more positive) for the boolean labels ``positive``.

    The Mann-Whitney statistic: the probability that a random positive scores above a random negative,
    ties counting one half (ranks of tied scores are averaged).
    """
    scores = torch.as_tensor(scores).detach().double().flatten().cpu()
    labels = torch.as_tensor(positive).detach().bool().flatten().cpu()
    if scores.shape != labels.shape:
        raise ValueError(f"auroc: {scores.numel()} scores but {labels.numel()} labels")
    n_pos = int(labels.sum())
    n_neg = labels.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("auroc needs at least one positive and one negative example")
    _, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    # 1-based rank of each distinct value, averaged over its ties
    ends = torch.cumsum(counts, 0).double()
    average_rank = ends - (counts.double() - 1) / 2
    rank_sum = average_rank[inverse][labels].sum().item()
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def classification_metrics(
    safe_scores: torch.Tensor, unsafe_scores: torch.Tensor, threshold: float
) -> dict[str, float]:
    """Unsafe when score > ``threshold``: ``accuracy`` (all items), ``tpr`` (unsafe flagged), ``tnr`` (safe
    passed), ``balanced_accuracy``, ``auroc`` and the ``threshold``."""
    safe_scores = torch.as_tensor(safe_scores).double().flatten().cpu()
    unsafe_scores = torch.as_tensor(unsafe_scores).double().flatten().cpu()
    tnr = (safe_scores <= threshold).double().mean().item()
    tpr = (unsafe_scores > threshold).double().mean().item()
    correct = (safe_scores <= threshold).sum().item() + (unsafe_scores > threshold).sum().item()
    labels = torch.cat([torch.zeros(len(safe_scores)), torch.ones(len(unsafe_scores))]).bool()
    return {
        "accuracy": correct / (len(safe_scores) + len(unsafe_scores)),
        "balanced_accuracy": (tpr + tnr) / 2,
        "tpr": tpr,
        "tnr": tnr,
        "auroc": auroc(torch.cat([safe_scores, unsafe_scores]), labels),
        "threshold": float(threshold),
    }


def hysac_classification(
    emb: Mapping[str, torch.Tensor], curvature: lorentz.Curvature, bounds: HySACBounds
) -> dict[str, dict[str, float]]:
    """``{"text": ..., "image": ...}`` classification metrics of root distances at the bounds' thresholds."""
    d = {key: lorentz.root_distance(emb[key], curvature) for key in EMBEDDING_KEYS}
    return {
        "text": classification_metrics(d["text_safe"], d["text_unsafe"], bounds.threshold("text")),
        "image": classification_metrics(d["image_safe"], d["image_unsafe"], bounds.threshold("image")),
    }


def traversal_boundaries(bounds: HySACBounds, target: TraversalTarget = "query") -> dict[str, float]:
    """Root distance to which unsafe ``text`` / ``image`` queries are pulled: the safe threshold of the query's
    own modality (``"query"``, as ``HySAC.traverse`` does) or of the gallery's (``"gallery"``: a text query goes
    to the radius of safe images)."""
    if target not in ("query", "gallery"):
        raise ValueError(f"traversal target must be 'query' or 'gallery', got {target!r}")
    swap = target == "gallery"
    return {
        "text": bounds.threshold("image" if swap else "text"),
        "image": bounds.threshold("text" if swap else "image"),
    }


def hysac_retrieval(
    emb: Mapping[str, torch.Tensor],
    curvature: lorentz.Curvature,
    *,
    boundaries: Mapping[str, float] | None = None,
    strength: float = 1.0,
    method: str = "release",
    ks: Sequence[int] = KS,
) -> dict[str, float]:
    """Safe-CLIP Table 2 figures by Lorentz distance, plus ``unsafe_text_top1_safe_share`` /
    ``unsafe_image_top1_safe_share`` (unsafe queries whose top-1 in V+V* / T+T* is a safe item).

    With ``boundaries`` (``{"text": b, "image": b}``), the unsafe queries are traversed first by ``method``
    (``"release"``: ``b`` is the ``up_95`` bound; ``"geodesic"``: the root distance to pull to, with
    ``strength``); safe queries are never moved, so T->V and V->T are those of the plain embeddings.
    """
    emb = {key: emb[key].float() for key in EMBEDDING_KEYS}
    queries = {"text": emb["text_unsafe"], "image": emb["image_unsafe"]}
    if boundaries is not None:  # only the unsafe queries move; the galleries stay as embedded
        queries = {
            m: traverse(q, curvature, boundaries[m], method=method, strength=strength) for m, q in queries.items()
        }

    def similarity(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -lorentz.pairwise_distance(x, y, curvature)

    out = safe_clip_retrieval(
        emb["text_safe"],
        emb["image_safe"],
        emb["text_unsafe"],
        emb["image_unsafe"],
        ks=ks,
        similarity=similarity,
        unsafe_text_queries=queries["text"],
        unsafe_image_queries=queries["image"],
    )
    out["unsafe_text_top1_safe_share"] = 1.0 - out["unsafe_text_top1_unsafe_share"]
    out["unsafe_image_top1_safe_share"] = 1.0 - out["unsafe_image_top1_unsafe_share"]
    return out


@dataclass(frozen=True)
class HySACReport:
    """Everything ``evaluate_hysac`` measures for one model."""

    model: str
    classification: dict[str, dict[str, float]]
    retrieval: dict[str, float]
    traversal: dict[str, float]
    boundaries: dict[str, float]
    traversal_method: str = "release"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "classification": self.classification,
            "retrieval": self.retrieval,
            "traversal": self.traversal,
            "boundaries": self.boundaries,
            "traversal_method": self.traversal_method,
        }


def evaluate_hysac(
    name: str,
    emb: Mapping[str, torch.Tensor],
    curvature: lorentz.Curvature,
    bounds: HySACBounds,
    *,
    target: TraversalTarget = "query",
    strength: float = 1.0,
    method: str = "release",
    ks: Sequence[int] = KS,
) -> HySACReport:
    """Classification at the bounds' thresholds, retrieval without and with traversal (``method``)."""
    boundaries = traversal_boundaries(bounds, target)
    return HySACReport(
        model=name,
        classification=hysac_classification(emb, curvature, bounds),
        retrieval=hysac_retrieval(emb, curvature, ks=ks),
        traversal=hysac_retrieval(emb, curvature, boundaries=boundaries, strength=strength, method=method, ks=ks),
        boundaries=boundaries,
        traversal_method=method,
    )


def retrieval_table_rows(report: HySACReport, ks: Sequence[int] = KS) -> list[RetrievalRow]:
    """Table 2 rows (percent) of ``report``: ``NAME`` and ``NAME + traversal``."""
    return [
        *rows_from_metrics(report.model, report.retrieval, ks),
        *rows_from_metrics(f"{report.model} + traversal", report.traversal, ks),
    ]


SAFETY_COLUMNS = (
    "model",
    "text_accuracy",
    "text_auroc",
    "image_accuracy",
    "image_auroc",
    "unsafe_text_top1_safe_share",
    "unsafe_text_top1_safe_share_traversal",
    "unsafe_image_top1_safe_share",
    "unsafe_image_top1_safe_share_traversal",
)


def safety_row(report: HySACReport) -> list[float]:
    """The numbers of ``SAFETY_COLUMNS`` (after ``model``), as fractions."""
    c, r, t = report.classification, report.retrieval, report.traversal
    return [
        c["text"]["accuracy"],
        c["text"]["auroc"],
        c["image"]["accuracy"],
        c["image"]["auroc"],
        r["unsafe_text_top1_safe_share"],
        t["unsafe_text_top1_safe_share"],
        r["unsafe_image_top1_safe_share"],
        t["unsafe_image_top1_safe_share"],
    ]


def write_hysac_reports(
    reports: Sequence[HySACReport], out: str | Path, split: str = "test", ks: Sequence[int] = KS
) -> dict[str, Path]:
    """``hysac.csv`` / ``hysac.md`` (classification and safe shares) and ``retrieval.{csv,md,tex}``
    (Table 2 layout, with and without traversal) in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    values = [(report.model, safety_row(report)) for report in reports]
    csv_rows = [[model, *(f"{v:.6f}" for v in row)] for model, row in values]
    body = [[model, *(f"{100 * v:.1f}" for v in row)] for model, row in values]
    markdown = (
        f"HySAC on {split} (%): accuracy at the bounds' thresholds, AUROC of the root distance, and the "
        f"share of safe items at top-1 for unsafe queries without / with traversal.\n\n"
        f"{markdown_table(SAFETY_COLUMNS, body)}\n"
    )
    rows = [row for report in reports for row in retrieval_table_rows(report, ks)]
    return {
        "csv": atomic_write_text(out / "hysac.csv", csv_text(SAFETY_COLUMNS, csv_rows)),
        "md": atomic_write_text(out / "hysac.md", markdown),
        "retrieval": write_retrieval(rows, out, split),
    }


@torch.no_grad()
def embed_quadruplet_lists(
    model: Any,
    safe_texts: Sequence[str],
    unsafe_texts: Sequence[str],
    safe_images: Sequence[Any],
    unsafe_images: Sequence[Any],
    batch_size: int = 32,
) -> dict[str, torch.Tensor]:
    """S, U, V, G points of a ``safe_encoders.hysac.HySAC`` (its tokenizer / image processor). Images may be
    anything its processor takes, or paths (opened as RGB a batch at a time)."""
    from PIL import Image

    from safe_encoders.hysac import embed_images, embed_texts

    def images(items: Sequence[Any]) -> torch.Tensor:
        chunks = []
        for start in range(0, len(items), batch_size):
            batch = [
                Image.open(x).convert("RGB") if isinstance(x, str | Path) else x
                for x in items[start : start + batch_size]
            ]
            chunks.append(embed_images(model, batch, batch_size=batch_size).float().cpu())
        return torch.cat(chunks)

    return {
        "text_safe": embed_texts(model, list(safe_texts), batch_size=batch_size).float().cpu(),
        "text_unsafe": embed_texts(model, list(unsafe_texts), batch_size=batch_size).float().cpu(),
        "image_safe": images(safe_images),
        "image_unsafe": images(unsafe_images),
    }
