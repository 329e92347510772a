"""Safety traversal and retrieval by Lorentz distance.

Two traversals, by name in `TRAVERSALS` (`traverse(..., method=...)`):

- `"release"` (the default; HySAC as its authors released it, HySAC@e2ba79f): with `up95` the bound of
  the query's own modality (texts: `S.up_95`, images: `V.up_95`) and
  `tau = up95 + tanh((up95 - 0.8) / c) + 1` (`release_tau`), a point whose root distance exceeds `tau`
  has its space components rescaled to Euclidean norm `tau` (`x -> tau * x / |x|`; its root distance
  becomes `asinh(sqrt(c) tau) / sqrt(c)`, not `tau`); other points are unchanged. Deliberate
  difference: the release traverses one query at a time; `traverse_as_released` takes any batch and
  gives the same result per row.
- `"geodesic"` (ours, `traverse_to_safe`): a point whose root distance exceeds a boundary is moved
  back toward the root along its geodesic through the root (which keeps its direction: the geodesics
  through the root are the rays `expmap0(t u)`) to root distance `d - strength * (d - (b - margin))`,
  floored at 0: `strength=1` puts the point at `b - margin` (on the boundary for `margin=0`),
  `strength=0.5` halfway there, `strength=0` leaves it.

Points inside the boundary are returned bit for bit by both.
"""

from __future__ import annotations

from collections.abc import Callable
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


def release_tau(up95: float | torch.Tensor, curvature: lorentz.Curvature) -> torch.Tensor:
    """The release's traversal radius `tau = up95 + tanh((up95 - 0.8) / c) + 1` (a Euclidean norm of the
    space components, compared with root distances as the release does)."""
    up95 = up95 if isinstance(up95, torch.Tensor) else torch.tensor(float(up95), dtype=torch.float64)
    c = torch.as_tensor(curvature, dtype=up95.dtype, device=up95.device)
    return up95 + torch.tanh((up95 - 0.8) / c) + 1


def traverse_as_released(
    x: torch.Tensor,
    curvature: lorentz.Curvature,
    up95: float | torch.Tensor,
    *,
    strength: float = 1.0,
    margin: float = 0.0,
) -> torch.Tensor:
    """HySAC's released safety traversal of the points `x` `(..., D)` (see the module docstring).

    Args:
        up95: the 95th-percentile bound of the queries' own modality (a number, or a tensor broadcastable
            to `x.shape[:-1]`); `tau` is derived from it and the curvature.
        strength, margin: accepted for a common signature with `traverse_to_safe`; the release has neither,
            so only 1 and 0.
    """
    if strength != 1.0 or margin != 0.0:
        raise ValueError(
            f"the released traversal has no strength or margin (got {strength}, {margin}); use method='geodesic'."
        )
    distances = lorentz.root_distance(x, curvature)
    tau = release_tau(torch.as_tensor(up95, dtype=distances.dtype, device=distances.device), curvature)
    tau = tau.to(distances.dtype)
    norm = torch.linalg.vector_norm(lorentz._work(x), dim=-1)
    move = distances > tau  # a point beyond tau is never at the root, so norm > 0 there
    scale = torch.where(move, tau / torch.where(move, norm, torch.ones_like(norm)), torch.ones_like(norm))
    moved = (lorentz._work(x) * scale[..., None]).to(x.dtype)
    return torch.where(move[..., None], moved, x)


TRAVERSALS: dict[str, Callable[..., torch.Tensor]] = {
    "release": traverse_as_released,
    "geodesic": traverse_to_safe,
}
"""Traversal methods by name: `f(x, curvature, bound, *, strength=1.0, margin=0.0) -> points`."""


def traverse(
    x: torch.Tensor,
    curvature: lorentz.Curvature,
    bound: float | torch.Tensor,
    *,
    method: str = "release",
    strength: float = 1.0,
    margin: float = 0.0,
) -> torch.Tensor:
    """Safety traversal by name (`TRAVERSALS`): `bound` is the modality's `up_95` for `"release"`, the
    boundary root distance for `"geodesic"` (which alone takes `strength` and `margin`)."""
    try:
        fn = TRAVERSALS[method]
    except KeyError:
        raise ValueError(f"unknown traversal {method!r}; choose among {sorted(TRAVERSALS)}") from None
    return fn(x, curvature, bound, strength=strength, margin=margin)


@dataclass(frozen=True)
class Retrieved:
    """Top-k results per query: gallery `indices` `(Q, k)` and their Lorentz `distances` `(Q, k)`, nearest first."""

    indices: torch.Tensor
    distances: torch.Tensor


@dataclass(frozen=True)
class Gallery:
    """Points to search (`points` `(M, D)`, space components) with their time components, computed once:
    pass it to `top_k` instead of the bare points when the same gallery is searched again and again."""

    points: torch.Tensor
    time: torch.Tensor  # `(M,)`, as `lorentz.time_component` gives it
    curvature: float

    @classmethod
    def of(cls, points: torch.Tensor, curvature: lorentz.Curvature) -> Gallery:
        if points.ndim != 2:
            raise ValueError(f"a gallery must be (M, D), got {tuple(points.shape)}.")
        work = lorentz._work(points)
        c = float(curvature)
        squared = torch.einsum("md,md->m", work, work)  # one pass, no (M, D) temporary
        return cls(work, torch.sqrt(1 / torch.as_tensor(c, dtype=work.dtype) + squared), c)


def top_k(
    queries: torch.Tensor,
    gallery: torch.Tensor | Gallery,
    curvature: lorentz.Curvature,
    k: int = 1,
    *,
    chunk_size: int = 1024,
) -> Retrieved:
    """The `k` gallery points nearest (geodesic distance) to each query, computed `chunk_size` queries at a time.

    The distance falls as the Lorentz inner product rises, so each chunk ranks by the inner product (one
    matrix product) and takes `arccosh` of the `k` kept per query only; the distances are those of
    `lorentz.pairwise_distance`. A `Gallery` keeps the gallery's time components between calls."""
    if not isinstance(gallery, Gallery):
        if queries.ndim != 2 or gallery.ndim != 2:
            raise ValueError(f"top_k: queries and gallery must be (N, D) and (M, D), got {tuple(queries.shape)}, "
                             f"{tuple(gallery.shape)}.")  # fmt: skip
        gallery = Gallery.of(gallery, curvature)
    elif float(curvature) != gallery.curvature:
        raise ValueError(f"top_k: the gallery was prepared for curvature {gallery.curvature}, not {float(curvature)}.")
    if queries.ndim != 2:
        raise ValueError(f"top_k: queries must be (N, D), got {tuple(queries.shape)}.")
    points = gallery.points
    k = min(k, points.shape[0])
    indices, distances = [], []
    for start in range(0, queries.shape[0], chunk_size):
        block = lorentz._work(queries[start : start + chunk_size]).to(points.dtype)
        c = lorentz._curvature(curvature, block)
        products = block @ points.T
        products -= lorentz.time_component(block, c)[:, None] * gallery.time[None, :]  # <x, y>_L, in place
        values, positions = torch.topk(products, k, dim=1, largest=True)
        indices.append(positions)
        distances.append(lorentz._acosh1p(-c * values - 1) / torch.sqrt(c))
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
    method: str = "geodesic",
    chunk_size: int = 1024,
) -> Retrieved:
    """Retrieval with optional safety traversal: with `boundary` given, queries are traversed first by
    `method` (default the geodesic one, `boundary` being a root distance; `"release"` takes the modality's
    `up_95` as `boundary`); with `boundary=None` it is plain nearest-neighbour retrieval."""
    if boundary is not None:
        queries = traverse(queries, curvature, boundary, method=method, strength=strength, margin=margin)
    return top_k(queries, gallery, curvature, k, chunk_size=chunk_size)
