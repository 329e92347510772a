import math

import pytest
import torch

from train.losses import TERM_NAMES, SafeClipWeights, cosine_loss, info_nce, safe_clip_loss, safe_clip_terms


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_cosine_loss_hand_values():
    a = t([[1.0, 0.0], [0.0, 2.0]])
    b = t([[3.0, 0.0], [1.0, 1.0]])  # cosines 1 and 1/sqrt(2)
    assert cosine_loss(a, b).item() == pytest.approx((0.0 + (1 - 1 / math.sqrt(2))) / 2, abs=1e-12)


def test_info_nce_scale_one_hand_value():
    a = t([[1.0, 0.0], [1.0, 0.0]])
    b = t([[1.0, 0.0], [0.0, 1.0]])
    # logits [[1, 0], [1, 0]]; a->b rows: -log(e/(e+1)), -log(1/(e+1)); b->a (transpose [[1,1],[0,0]]): log 2 twice
    a_to_b = (math.log(1 + math.exp(-1)) + math.log(1 + math.e)) / 2
    b_to_a = math.log(2)
    assert info_nce(a, b, logit_scale=1.0).item() == pytest.approx(0.5 * (a_to_b + b_to_a), abs=1e-12)


def test_info_nce_default_scale_is_100_and_inputs_are_normalised():
    a = t([[2.0, 0.0], [0.0, 5.0]])
    b = t([[1.0, 0.0], [1.8, 2.4]])  # unit rows: [1, 0], [0.6, 0.8]
    # logits 100 * [[1, 0.6], [0, 0.8]] = [[100, 60], [0, 80]]
    a_to_b = (math.log1p(math.exp(-40)) + math.log1p(math.exp(-80))) / 2
    b_to_a = (math.log1p(math.exp(-100)) + math.log1p(math.exp(-20))) / 2
    expected = 0.5 * (a_to_b + b_to_a)
    assert info_nce(a, b).item() == pytest.approx(expected, rel=1e-9)
    assert info_nce(a, b, logit_scale=torch.tensor(100.0, dtype=torch.float64)).item() == pytest.approx(
        expected, rel=1e-9
    )


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="equal shape"):
        info_nce(torch.zeros(2, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="equal shape"):
        cosine_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def test_default_weights_are_the_authors_normalised():
    w = SafeClipWeights().normalised()
    raw = (0.1, 0.1, 0.1, 0.2, 0.25, 0.25, 0.25, 0.5)
    assert list(w) == list(TERM_NAMES)
    for name, r in zip(TERM_NAMES, raw, strict=True):
        assert w[name] == pytest.approx(r / 1.75)
    assert sum(w.values()) == pytest.approx(1.0)


def test_weights_validation():
    with pytest.raises(ValueError, match="non-negative"):
        SafeClipWeights(cos_text_safe=-1.0)
    with pytest.raises(ValueError, match="all be zero"):
        SafeClipWeights(**dict.fromkeys(TERM_NAMES, 0.0))


def _quadruplet():
    """2 rows, 2-d unit vectors. The two references differ (T0(S) = identity rows, V0(V) rotated), so a term
    reading the wrong reference, or the wrong encoder output, gets another value."""
    return {
        "text_safe": t([[1.0, 0.0], [0.6, 0.8]]),
        "text_unsafe": t([[0.0, 1.0], [1.0, 0.0]]),
        "image_safe": t([[0.6, 0.8], [0.0, 1.0]]),
        "image_unsafe": t([[1.0, 0.0], [0.8, -0.6]]),
        "ref_text_safe": t([[1.0, 0.0], [0.0, 1.0]]),
        "ref_image_safe": t([[0.6, 0.8], [0.8, -0.6]]),
    }, math.e


def _symmetric_ce(logits):
    """Hand InfoNCE of a 2x2 logit matrix (row i, column i positive): mean of the row-wise and column-wise
    cross-entropies, each averaged over the two positives."""

    def ce(rows):
        return sum(math.log(sum(math.exp(v) for v in row)) - row[i] for i, row in enumerate(rows)) / len(rows)

    return 0.5 * (ce(logits) + ce([list(col) for col in zip(*logits, strict=True)]))


def test_terms_route_the_right_pairs_with_hand_values():
    q, _ = _quadruplet()
    terms = {k: v.item() for k, v in safe_clip_terms(**q, logit_scale=1.0).items()}
    # cosine terms, mean over rows of 1 - cos:
    assert terms["cos_text_safe"] == pytest.approx((0 + 0.2) / 2)  # T(S) . T0(S): 1, 0.8
    assert terms["cos_text_unsafe"] == pytest.approx((1 + 1) / 2)  # T(U) . T0(S): 0, 0
    assert terms["cos_image_safe"] == pytest.approx((0 + 1.6) / 2)  # V(V) . V0(V): 1, -0.6
    assert terms["cos_image_unsafe"] == pytest.approx((0.4 + 0) / 2)  # V(G) . V0(V): 0.6, 1
    # InfoNCE at scale 1 over the dot products (all vectors unit length), written out by hand:
    assert terms["nce_text_safe"] == pytest.approx(_symmetric_ce([[0.6, 0.8], [1.0, 0.0]]))  # T(S) x V0(V)
    assert terms["nce_text_unsafe"] == pytest.approx(_symmetric_ce([[0.8, -0.6], [0.6, 0.8]]))  # T(U) x V0(V)
    assert terms["nce_image_safe"] == pytest.approx(_symmetric_ce([[0.6, 0.8], [0.0, 1.0]]))  # V(V) x T0(S)
    assert terms["nce_image_unsafe"] == pytest.approx(_symmetric_ce([[1.0, 0.0], [0.8, -0.6]]))  # V(G) x T0(S)
    # the fixture bites: the eight values are pairwise distinct, and every term changes if its reference is swapped
    assert len({round(v, 6) for v in terms.values()}) == 8
    crossed = {**q, "ref_text_safe": q["ref_image_safe"], "ref_image_safe": q["ref_text_safe"]}
    swapped = {k: v.item() for k, v in safe_clip_terms(**crossed, logit_scale=1.0).items()}
    assert all(abs(swapped[k] - terms[k]) > 1e-3 for k in terms)


def test_total_is_normalised_weighted_sum_and_each_weight_is_configurable():
    q, _ = _quadruplet()
    terms = {k: v.item() for k, v in safe_clip_terms(**q).items()}
    total, detached = safe_clip_loss(**q)
    raw = dict(zip(TERM_NAMES, (0.1, 0.1, 0.1, 0.2, 0.25, 0.25, 0.25, 0.5), strict=True))
    assert total.item() == pytest.approx(sum(raw[k] * terms[k] for k in TERM_NAMES) / 1.75)
    assert all(not v.requires_grad for v in detached.values())
    for name in TERM_NAMES:
        one_hot = SafeClipWeights(**{k: (3.0 if k == name else 0.0) for k in TERM_NAMES})
        total, _ = safe_clip_loss(**q, weights=one_hot)
        assert total.item() == pytest.approx(terms[name])


def test_gradients_do_not_reach_the_references():
    q, _ = _quadruplet()
    q = {k: v.clone().requires_grad_(True) for k, v in q.items()}
    total, _ = safe_clip_loss(**q)
    total.backward()
    assert q["ref_text_safe"].grad is None and q["ref_image_safe"].grad is None
    assert q["text_unsafe"].grad is not None and q["image_unsafe"].grad.abs().sum() > 0
