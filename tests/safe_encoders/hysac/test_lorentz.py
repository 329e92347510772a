import math

import pytest
import torch

from safe_encoders.hysac import lorentz as L


def _random_points(n=6, d=5, seed=0, scale=1.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype) * scale


# ------------------------------------------------------------------ hand-computed values


def test_time_component_and_inner_by_hand():
    x = torch.tensor([3.0, 4.0], dtype=torch.float64)
    assert L.time_component(x, 1.0).item() == pytest.approx(math.sqrt(26))
    assert L.time_component(x, 2.0).item() == pytest.approx(math.sqrt(0.5 + 25))
    y = torch.tensor([1.0, 0.0], dtype=torch.float64)
    # x.y - x_t y_t with c = 1: 3 - sqrt(26) * sqrt(2)
    assert L.inner(x, y, 1.0).item() == pytest.approx(3 - math.sqrt(26) * math.sqrt(2))


def test_expmap0_by_hand():
    v = torch.tensor([0.3, 0.4], dtype=torch.float64)  # |v| = 0.5, sqrt(c) |v| = 1 for c = 4
    x = L.expmap0(v, 4.0)
    expected = [math.sinh(1.0) * 0.3, math.sinh(1.0) * 0.4]
    assert x.tolist() == pytest.approx(expected)


def test_distance_hyperbolic_pythagoras():
    # Perpendicular geodesics from the root of lengths a and b (c = 1): cosh d = cosh a cosh b.
    a, b = 1.0, 2.0
    x = torch.tensor([math.sinh(a), 0.0], dtype=torch.float64)
    y = torch.tensor([0.0, math.sinh(b)], dtype=torch.float64)
    expected = math.acosh(math.cosh(a) * math.cosh(b))
    assert L.distance(x, y, 1.0).item() == pytest.approx(expected)
    assert L.pairwise_distance(x[None], y[None], 1.0).item() == pytest.approx(expected)


def test_distance_scales_with_curvature():
    # Same ray, c = 4: points at root distances 0.5 and 1.25 are 0.75 apart.
    c = 4.0
    x = torch.tensor([math.sinh(2 * 0.5) / 2, 0.0], dtype=torch.float64)
    y = torch.tensor([math.sinh(2 * 1.25) / 2, 0.0], dtype=torch.float64)
    assert L.root_distance(x, c).item() == pytest.approx(0.5)
    assert L.root_distance(y, c).item() == pytest.approx(1.25)
    assert L.distance(x, y, c).item() == pytest.approx(0.75)


def test_half_aperture_by_hand():
    x = torch.tensor([0.5, 0.0], dtype=torch.float64)
    assert L.half_aperture(x, 1.0).item() == pytest.approx(math.asin(0.2 / 0.5))
    assert L.half_aperture(x, 4.0).item() == pytest.approx(math.asin(0.2 / (2 * 0.5)))
    assert L.half_aperture(x, 1.0, k=0.05).item() == pytest.approx(math.asin(0.1 / 0.5))
    # Near the root the cone is (almost) a half space.
    assert L.half_aperture(torch.tensor([0.01, 0.0]), 1.0).item() == pytest.approx(math.pi / 2, abs=1e-3)


@pytest.mark.parametrize("c", [1.0, 0.3, 2.5])
def test_exterior_angle_on_the_ray_and_behind(c):
    u = torch.tensor([0.6, 0.8], dtype=torch.float64)
    near, far = L.expmap0(0.5 * u, c), L.expmap0(1.5 * u, c)
    assert L.exterior_angle(near, far, c).item() == pytest.approx(0.0, abs=1e-3)
    assert L.exterior_angle(far, near, c).item() == pytest.approx(math.pi, abs=1e-3)
    assert L.cone_violation(near, far, c).item() == 0.0


def test_exterior_angle_right_triangle():
    # Right angle at the root; the interior angle at x satisfies cos A = tanh(a) / tanh(h).
    a, b = 0.8, 1.3
    x = torch.tensor([math.sinh(a), 0.0], dtype=torch.float64)
    y = torch.tensor([0.0, math.sinh(b)], dtype=torch.float64)
    h = math.acosh(math.cosh(a) * math.cosh(b))
    expected = math.pi - math.acos(math.tanh(a) / math.tanh(h))
    assert L.exterior_angle(x, y, 1.0).item() == pytest.approx(expected)
    assert L.cone_violation(x, y, 1.0).item() == pytest.approx(expected - math.asin(0.2 / math.sinh(a)))


# -------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("c", [0.1, 1.0, 10.0])
def test_points_stay_on_the_hyperboloid(c):
    x = L.expmap0(_random_points(scale=0.7), c)
    assert torch.allclose(L.inner(x, x, c), torch.full((6,), -1 / c, dtype=torch.float64), rtol=1e-9)
    x32 = L.expmap0(_random_points(scale=0.7, dtype=torch.float32), c)
    # float32 rounding of |x|^2 - x_t^2 grows with |x|^2
    error = (L.inner(x32, x32, c) + 1 / c).abs()
    assert (error <= 1e-6 * (1 + (x32 * x32).sum(-1))).all()


@pytest.mark.parametrize("c", [0.5, 1.0, 3.0])
def test_expmap0_logmap0_inverse_and_root_distance(c):
    v = _random_points(scale=0.8)
    x = L.expmap0(v, c)
    assert torch.allclose(L.logmap0(x, c), v, atol=1e-10)
    assert torch.allclose(L.root_distance(x, c), v.norm(dim=-1), atol=1e-10)
    # The root distance is also the distance to the root point.
    assert torch.allclose(L.distance(x, torch.zeros_like(x), c), v.norm(dim=-1), atol=1e-10)


def test_expmap0_of_zero_is_the_root_with_finite_gradient():
    v = torch.zeros(2, 3, requires_grad=True)
    x = L.expmap0(v, 1.0)
    assert torch.equal(x, torch.zeros(2, 3))
    x.sum().backward()
    assert torch.isfinite(v.grad).all()


def test_pairwise_distance_is_symmetric_with_zero_diagonal_and_matches_rows():
    c = 1.7
    x = L.expmap0(_random_points(8, scale=0.9), c)
    d = L.pairwise_distance(x, None, c)
    assert torch.allclose(d, d.T, atol=1e-10)
    assert torch.equal(torch.diagonal(d), torch.zeros(8, dtype=torch.float64))
    assert (d + torch.eye(8, dtype=torch.float64) > 0).all()
    rows = L.distance(x[:, None, :], x[None, :, :], c)
    assert torch.allclose(rows, d, atol=1e-8)
    assert torch.equal(torch.diagonal(rows), torch.zeros(8, dtype=torch.float64))
    # triangle inequality
    assert (d[:, None, :] <= d[:, :, None] + d[None, :, :].transpose(1, 2) + 1e-9).all()


def test_distance_of_identical_points_is_exactly_zero_in_float32_far_from_the_root():
    x = L.expmap0(_random_points(dtype=torch.float32, scale=3.0), 1.0)
    assert torch.equal(L.distance(x, x, 1.0), torch.zeros(6))
    x.requires_grad_(True)
    L.distance(x, x.detach().clone(), 1.0).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_nearby_points_far_from_root_keep_their_distance_in_float32():
    c = 1.0
    u = torch.tensor([1.0, 0.0])
    x, y = L.expmap0(5.0 * u, c), L.expmap0(5.01 * u, c)
    assert L.distance(x, y, c).item() == pytest.approx(0.01, rel=1e-2)


def test_aperture_shrinks_with_the_norm():
    u = torch.tensor([0.6, 0.0, 0.8], dtype=torch.float64)
    norms = torch.linspace(0.3, 5.0, 20, dtype=torch.float64)
    apertures = L.half_aperture(norms[:, None] * u, 1.0)
    assert (apertures[1:] < apertures[:-1]).all()


def test_broadcasting_over_leading_dimensions():
    c = torch.tensor(0.7, dtype=torch.float64)
    x = L.expmap0(_random_points(4, seed=1).reshape(2, 2, 5), c)
    y = L.expmap0(_random_points(2, seed=2), c)
    assert L.distance(x, y, c).shape == (2, 2)
    assert L.exterior_angle(x, y, c).shape == (2, 2)
    assert L.half_aperture(x, c).shape == (2, 2)
    assert L.time_component(x, c).shape == (2, 2)


def test_half_precision_is_computed_in_float32():
    v = _random_points(dtype=torch.float16, scale=2.0)
    x = L.expmap0(v, 1.0)
    assert x.dtype == torch.float32 and torch.isfinite(x).all()
    assert L.pairwise_distance(x.half(), None, 1.0).dtype == torch.float32


def test_expmap0_saturates_instead_of_overflowing():
    x = L.expmap0(torch.tensor([[1e4, 0.0]]), 1.0)
    assert torch.isfinite(x).all()
    assert L.root_distance(x, 1.0).item() == pytest.approx(L.MAX_RADIUS, rel=1e-5)


def test_geodesic_point_keeps_the_direction_and_sets_the_root_distance():
    c = 2.0
    x = L.expmap0(_random_points(5, scale=1.5), c)
    targets = torch.tensor([0.1, 0.2, 0.3, 0.0, 1.0], dtype=torch.float64)
    moved = L.geodesic_point(x, targets, c)
    assert torch.allclose(L.root_distance(moved, c), targets, atol=1e-10)
    # root, moved and x are on one geodesic: the distances add up
    assert torch.allclose(L.distance(moved, x, c), (L.root_distance(x, c) - targets).abs(), atol=1e-8)
    assert torch.equal(L.geodesic_point(torch.zeros(1, 3), torch.tensor([1.0]), c), torch.zeros(1, 3))


def test_curvature_log_bounds_validate():
    assert L.curvature_log_bounds() == pytest.approx((math.log(0.1), math.log(10)))
    with pytest.raises(ValueError, match="0 < low <= high"):
        L.curvature_log_bounds(1.0, 0.5)
