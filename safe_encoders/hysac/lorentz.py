"""The Lorentz (hyperboloid) model of hyperbolic space of curvature -c, as pure batched torch functions.

Conventions (MERU, Desai et al. 2023; HySAC, Poppi et al. 2025):

- A point is stored by its *space* components `x` (shape `(..., D)`); its time component is
  `x_t = sqrt(1/c + |x|^2)`, so that `<x, x>_L = -1/c` (the upper sheet of the hyperboloid).
- The root (origin) of the space is `x = 0` (time component `1/sqrt(c)`).
- Lorentz inner product: `<x, y>_L = x . y - x_t y_t`.
- Geodesic distance: `d(x, y) = arccosh(-c <x, y>_L) / sqrt(c)`.

Every function broadcasts over the leading dimensions, takes the curvature `c` (the positive number
`c`, not the log) as a float or a tensor broadcastable to the batch, and clamps where a formula is
singular (zero vectors, `arccosh` at 1, `asin` / `acos` at +-1) so that values and gradients stay
finite. Half-precision inputs are computed and returned in float32: points far from the root
overflow float16 (`|x|` grows like `exp(sqrt(c) d)`).
"""

from __future__ import annotations

import math

import torch

Curvature = float | torch.Tensor

# sqrt(c) * (distance from the root) at which `expmap0` saturates: sinh(30) ~ 5e12, so |x|^2 and
# x_t * y_t stay far below float32's range.
MAX_RADIUS = 30.0
# Aperture constant of the entailment cones (HySAC / MERU).
CONE_K = 0.1
_EPS = 1e-7


def _work(x: torch.Tensor) -> torch.Tensor:
    """Upcast half precision to float32 (see the module docstring)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _curvature(c: Curvature, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(c, dtype=like.dtype, device=like.device)


def _safe_norm(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(|x| with 1 where x = 0, mask of x != 0), over the last dimension, keepdim; finite gradients at 0."""
    squared = (x * x).sum(dim=-1, keepdim=True)
    nonzero = squared > 0
    return torch.sqrt(torch.where(nonzero, squared, torch.ones_like(squared))), nonzero


def _acosh1p(z: torch.Tensor) -> torch.Tensor:
    """arccosh(1 + z) for z >= 0, accurate for small z, exactly 0 (with a zero gradient) at z = 0."""
    z = z.clamp_min(0)
    positive = z > 0
    safe = torch.where(positive, z, torch.ones_like(z))
    value = torch.log1p(safe + torch.sqrt(safe * (safe + 2)))
    return torch.where(positive, value, torch.zeros_like(z))


def time_component(x: torch.Tensor, c: Curvature) -> torch.Tensor:
    """`x_t = sqrt(1/c + |x|^2)`, shape `x.shape[:-1]`."""
    x = _work(x)
    c = _curvature(c, x)
    return torch.sqrt(1 / c + (x * x).sum(dim=-1))


def inner(x: torch.Tensor, y: torch.Tensor, c: Curvature) -> torch.Tensor:
    """Lorentz inner product `<x, y>_L = x . y - x_t y_t` of matching (broadcast) rows, shape `(...)`."""
    x, y = _work(x), _work(y)
    return (x * y).sum(dim=-1) - time_component(x, c) * time_component(y, c)


def pairwise_inner(x: torch.Tensor, y: torch.Tensor, c: Curvature) -> torch.Tensor:
    """`<x_i, y_j>_L` for every pair: `x` `(N, D)`, `y` `(M, D)` -> `(N, M)`."""
    x, y = _work(x), _work(y)
    return x @ y.transpose(-1, -2) - time_component(x, c)[..., :, None] * time_component(y, c)[..., None, :]


def expmap0(v: torch.Tensor, c: Curvature) -> torch.Tensor:
    """Exponential map at the root: the point reached along the geodesic with initial velocity `v`.

    `x = sinh(sqrt(c) |v|) v / (sqrt(c) |v|)`. The root distance of the result is `|v|`, saturating
    at `MAX_RADIUS / sqrt(c)`. `expmap0(0) = 0`.
    """
    v = _work(v)
    c = _curvature(c, v)
    sqrt_c = torch.sqrt(c)
    norm, nonzero = _safe_norm(v)
    radius = (sqrt_c * norm).clamp(max=MAX_RADIUS)
    factor = torch.where(nonzero, torch.sinh(radius) / (sqrt_c * norm), torch.ones_like(norm))
    return factor * v


def logmap0(x: torch.Tensor, c: Curvature) -> torch.Tensor:
    """Logarithmic map at the root (inverse of `expmap0`): `v = asinh(sqrt(c) |x|) x / (sqrt(c) |x|)`."""
    x = _work(x)
    c = _curvature(c, x)
    sqrt_c = torch.sqrt(c)
    norm, nonzero = _safe_norm(x)
    factor = torch.where(nonzero, torch.asinh(sqrt_c * norm) / (sqrt_c * norm), torch.ones_like(norm))
    return factor * x


def root_distance(x: torch.Tensor, c: Curvature) -> torch.Tensor:
    """Geodesic distance from the root: `asinh(sqrt(c) |x|) / sqrt(c)`, shape `x.shape[:-1]`.

    This is HySAC's unsafe score: safe text < safe image < unsafe text < unsafe image.
    """
    x = _work(x)
    c = _curvature(c, x)
    sqrt_c = torch.sqrt(c)
    return torch.asinh(sqrt_c * torch.linalg.vector_norm(x, dim=-1)) / sqrt_c


def distance(x: torch.Tensor, y: torch.Tensor, c: Curvature) -> torch.Tensor:
    """Geodesic distance between matching (broadcast) rows of `x` and `y`, shape `(...)`.

    Computed as `arccosh(1 + c/2 * <x - y, x - y>_L) / sqrt(c)` with the time difference written as
    `(x - y).(x + y) / (x_t + y_t)`: no cancellation, so `distance(x, x) == 0` exactly and small
    distances between far-away points keep their precision.
    """
    x, y = _work(x), _work(y)
    c = _curvature(c, x)
    diff, total = x - y, x + y
    time_diff = (diff * total).sum(dim=-1) / (time_component(x, c) + time_component(y, c))
    z = c / 2 * ((diff * diff).sum(dim=-1) - time_diff * time_diff)
    return _acosh1p(z) / torch.sqrt(c)


def pairwise_distance(x: torch.Tensor, y: torch.Tensor | None, c: Curvature) -> torch.Tensor:
    """Geodesic distances between all rows of `x` `(N, D)` and `y` `(M, D)` -> `(N, M)`.

    One matrix product, so memory is `O(N M)`; the argument of arccosh is clamped to >= 1. In
    float32 two points at root distance r that are very close get a distance error of about
    `sqrt(1e-7) * exp(sqrt(c) r)`; pass float64 inputs (or use `distance`) when that matters.
    With `y=None` the distances within `x` are returned and the diagonal is exactly 0.
    """
    same = y is None
    other = x if y is None else y
    x = _work(x)
    c = _curvature(c, x)
    z = -c * pairwise_inner(x, _work(other), c) - 1
    result = _acosh1p(z) / torch.sqrt(c)
    if same:
        result = result * (1 - torch.eye(result.shape[-1], dtype=result.dtype, device=result.device))
    return result


def half_aperture(x: torch.Tensor, c: Curvature, k: float = CONE_K) -> torch.Tensor:
    """Half aperture of the entailment cone at `x`: `asin(2k / (sqrt(c) |x|))`, clamped to `[0, pi/2)`.

    Shrinks as `x` moves away from the root: general concepts (near the root) have wide cones.
    """
    x = _work(x)
    c = _curvature(c, x)
    norm = torch.linalg.vector_norm(x, dim=-1).clamp_min(_EPS)
    return torch.asin((2 * k / (torch.sqrt(c) * norm)).clamp(max=1 - _EPS))


def exterior_angle(x: torch.Tensor, y: torch.Tensor, c: Curvature) -> torch.Tensor:
    """Exterior angle at `x` of the triangle (root, x, y), in `[0, pi]`, for matching rows.

    `angle = acos((y_t + q x_t) / (|x| sqrt(q^2 - 1)))` with `q = c <x, y>_L`. It is 0 when `y` lies
    on the geodesic from the root through `x`, beyond `x`, and `pi` when it lies between them.
    """
    x, y = _work(x), _work(y)
    c = _curvature(c, x)
    q = c * inner(x, y, c)
    numerator = time_component(y, c) + q * time_component(x, c)
    denominator = torch.linalg.vector_norm(x, dim=-1) * torch.sqrt((q * q - 1).clamp_min(_EPS))
    return torch.acos((numerator / denominator.clamp_min(_EPS)).clamp(-1 + _EPS, 1 - _EPS))


def cone_violation(x: torch.Tensor, y: torch.Tensor, c: Curvature, k: float = CONE_K) -> torch.Tensor:
    """How far `y` lies outside the entailment cone of `x`: `max(0, exterior_angle(x, y) - half_aperture(x))`.

    Zero when `x` entails `y` (HySAC's entailment loss term, per pair, before averaging).
    """
    return (exterior_angle(x, y, c) - half_aperture(x, c, k)).clamp_min(0)


def geodesic_point(x: torch.Tensor, target_distance: torch.Tensor, c: Curvature) -> torch.Tensor:
    """The point on the geodesic from the root through `x` at root distance `target_distance`.

    `target_distance` broadcasts to `x.shape[:-1]`.

    For `x = 0` (no direction) the root is returned.
    """
    x = _work(x)
    c = _curvature(c, x)
    direction = x / _safe_norm(x)[0]
    radius = (torch.sqrt(c) * torch.as_tensor(target_distance, dtype=x.dtype, device=x.device)).clamp(0, MAX_RADIUS)
    return direction * (torch.sinh(radius) / torch.sqrt(c))[..., None]


def curvature_log_bounds(low: float = 0.1, high: float = 10.0) -> tuple[float, float]:
    """`(log low, log high)`: the clamp of the learnable log-curvature."""
    if not 0 < low <= high:
        raise ValueError(f"curvature bounds must satisfy 0 < low <= high, got ({low}, {high}).")
    return math.log(low), math.log(high)
