"""Safety traversal and retrieval by Lorentz distance.

Traversal moves every point whose root distance exceeds a boundary back toward the root along its
geodesic through the root (which keeps its direction: the geodesics through the root are the rays
`expmap0(t u)`), so that an unsafe query lands among safe content; points inside the boundary are
returned unchanged. It works on any batch, with a per-point boundary if wanted.

With `d` the root distance of a point and `b` the boundary, the new root distance is
`d - strength * (d - (b - margin))`, floored at 0: `strength=1` puts the point at `b - margin`
(on the boundary for `margin=0`), `strength=0.5` halfway there, `strength=0` leaves it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import lorentz


def traverse_to_safe(
    x: torch.Tensor,
    curvature: lorentz.Curvature,
    boundary: float | torch.Tensor,
    *,
    strength: float = 1.0,
    margin: float = 0.0,
) -> torch.Tensor:
    """Pull the points of `x` `(..., D)` that lie beyond `boundary` (root distance) toward the root.

    Args:
        boundary: a root distance, or a tensor broadcastable to `x.shape[:-1]` (e.g. per modality).
        strength: fraction of the way from the point to the target distance `boundary - margin`
            (>= 0; values above 1 go further toward the root).
        margin: how far inside the boundary the target lies (negative: stop outside it).
    """
    if strength < 0:
        raise ValueError(f"traverse_to_safe: strength must be >= 0, got {strength}.")
    distances = lorentz.root_distance(x, curvature)
    boundary = torch.as_tensor(boundary, dtype=distances.dtype, device=distances.device)
    target = (distances - strength * (distances - (boundary - margin))).clamp_min(0)
    move = (distances > boundary) & (target != distances)  # points that stay are returned bit for bit
    moved = lorentz.geodesic_point(x, torch.where(move, target, distances), curvature)
    return torch.where(move[..., None], moved.to(x.dtype), x)


@dataclass(frozen=True)
class Retrieved:
    """Top-k results per query: gallery `indices` `(Q, k)` and their Lorentz `distances` `(Q, k)`, nearest first."""

    indices: torch.Tensor
    distances: torch.Tensor


def top_k(
    queries: torch.Tensor, gallery: torch.Tensor, curvature: lorentz.Curvature, k: int = 1, *, chunk_size: int = 1024
) -> Retrieved:
    """The `k` gallery points nearest (geodesic distance) to each query, computed `chunk_size` queries at a time."""
    if queries.ndim != 2 or gallery.ndim != 2:
        raise ValueError(f"top_k: queries and gallery must be (N, D) and (M, D), got {tuple(queries.shape)}, "
                         f"{tuple(gallery.shape)}.")  # fmt: skip
    k = min(k, gallery.shape[0])
    indices, distances = [], []
    for start in range(0, queries.shape[0], chunk_size):
        block = lorentz.pairwise_distance(queries[start : start + chunk_size], gallery, curvature)
        values, positions = torch.topk(block, k, dim=1, largest=False)
        indices.append(positions)
        distances.append(values)
    if not indices:
        return Retrieved(torch.empty(0, k, dtype=torch.long), torch.empty(0, k))
    return Retrieved(torch.cat(indices), torch.cat(distances))


def retrieve(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    curvature: lorentz.Curvature,
    *,
    k: int = 1,
    boundary: float | torch.Tensor | None = None,
    strength: float = 1.0,
    margin: float = 0.0,
    chunk_size: int = 1024,
) -> Retrieved:
    """Retrieval with optional safety traversal: with `boundary` given, queries beyond it are traversed
    first (`traverse_to_safe`); with `boundary=None` it is plain nearest-neighbour retrieval."""
    if boundary is not None:
        queries = traverse_to_safe(queries, curvature, boundary, strength=strength, margin=margin)
    return top_k(queries, gallery, curvature, k, chunk_size=chunk_size)
