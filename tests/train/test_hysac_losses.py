"""HySAC losses on small tensors whose values are worked out by hand (curvature 1)."""

import math
from dataclasses import asdict

import pytest
import torch

from safe_encoders.hysac import lorentz
from train.hysac_losses import (
    HYSAC_TERM_NAMES,
    HySACWeights,
    entailment_loss,
    hyperbolic_contrastive,
    hysac_loss,
    hysac_terms,
)


def on_axis(*radii: float, dim: int = 2) -> torch.Tensor:
    """Points on the first axis at the given root distances (c = 1: space component sinh(r))."""
    x = torch.zeros(len(radii), dim, dtype=torch.float64)
    x[:, 0] = torch.sinh(torch.tensor(radii, dtype=torch.float64))
    return x


def test_contrastive_uses_minus_distance_times_scale():
    # Two points at root distances 0 and 1 on one ray: d = [[0, 1], [1, 0]].
    a = on_axis(0.0, 1.0)
    for scale in (1.0, 3.0):
        expected = math.log(1 + math.exp(-scale))  # each row: -log(1 / (1 + e^-scale)), both directions alike
        value = hyperbolic_contrastive(a, a.clone(), 1.0, scale)
        assert value.item() == pytest.approx(expected, abs=1e-7)  # pairwise_distance clamps arccosh near 1


def test_contrastive_is_symmetric_mean_of_both_directions():
    # a = (root, root), b = radii (0, 2). a->b: both rows see logits [0, -2]; row 0 (target 0) costs
    # log(1 + e^-2), row 1 (target 1) costs 2 + log(1 + e^-2). b->a: rows see [0, 0] and [-2, -2]: log 2 each.
    a = on_axis(0.0, 0.0)
    b = on_axis(0.0, 2.0)
    a_to_b = (2 * math.log(1 + math.exp(-2)) + 2) / 2
    expected = 0.5 * (a_to_b + math.log(2))
    assert hyperbolic_contrastive(a, b, 1.0, 1.0).item() == pytest.approx(expected, abs=1e-7)
    with pytest.raises(ValueError):
        hyperbolic_contrastive(a, b[:1], 1.0, 1.0)


def test_entailment_zero_beyond_on_ray_and_positive_off_cone():
    k = 0.1
    general = torch.tensor([[2.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    specific = torch.tensor([[3.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    # Row 0: further out on the same ray -> exterior angle 0 -> no loss.
    # Row 1 by hand: x_t = sqrt 2, y_t = sqrt 3, q = <x, y>_L = 1 - sqrt 6,
    # angle = acos((sqrt 3 + q sqrt 2) / (1 * sqrt(q^2 - 1))), aperture = asin(2k / 1).
    q = 1 - math.sqrt(6)
    angle = math.acos((math.sqrt(3) + q * math.sqrt(2)) / math.sqrt(q * q - 1))
    row1 = angle - math.asin(2 * k)
    assert row1 == pytest.approx(1.6763, abs=1e-3)
    value = entailment_loss(general, specific, 1.0, k)
    assert value.item() == pytest.approx(row1 / 2, abs=1e-6)
    # Between the root and the general point: exterior angle pi.
    inside = entailment_loss(general[:1], torch.tensor([[1.0, 0.0]], dtype=torch.float64), 1.0, k)
    assert inside.item() == pytest.approx(math.pi - math.asin(2 * k / 2), abs=1e-3)


def test_terms_order_groups_by_root_distance_and_use_lorentz_ops():
    # S < V < U < G on one ray: every cone holds the next point, so the three entailment terms vanish.
    s, v, u, g = (on_axis(r, r) for r in (0.5, 1.0, 1.5, 2.0))
    terms = hysac_terms(s, u, v, g, 1.0, 2.0)
    assert set(terms) == set(HYSAC_TERM_NAMES)
    for name in ("ent_sv", "ent_vu", "ent_ug"):
        assert terms[name].item() == pytest.approx(0.0, abs=1e-6)
    # Swapped safe/unsafe images (G inside V): V -> U and U -> G break, S -> G holds (still on the ray, beyond S).
    swapped = hysac_terms(s, u, g, v, 1.0, 2.0)
    assert (
        swapped["ent_vu"] > 0.5 and swapped["ent_ug"] > 0.5 and swapped["ent_sv"].item() == pytest.approx(0, abs=1e-6)
    )
    # Contrastive (S, G) pairs text_safe with image_unsafe, matching its own pair function.
    assert terms["con_sg"].item() == pytest.approx(hyperbolic_contrastive(s, g, 1.0, 2.0).item())
    assert terms["con_uv"].item() == pytest.approx(hyperbolic_contrastive(u, v, 1.0, 2.0).item())
    assert terms["ent_vu"].item() == pytest.approx(lorentz.cone_violation(v, u, 1.0).mean().item(), abs=1e-12)


def test_weighted_total_and_gradients():
    torch.manual_seed(0)
    pts = [torch.randn(4, 3, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    c = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    weights = HySACWeights(con_sv=2.0, con_ug=0.0, ent_vu=0.5)
    total, terms = hysac_loss(*pts, curvature=c, logit_scale=scale, weights=weights)
    expected = sum(w * terms[name] for name, w in asdict(weights).items())
    assert total.item() == pytest.approx(expected.item())
    assert all(not t.requires_grad for t in terms.values())
    total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in pts)
    assert c.grad is not None and scale.grad is not None
    with pytest.raises(ValueError):
        HySACWeights(con_sv=-1.0)
