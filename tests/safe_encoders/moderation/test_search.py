"""`search`: the FAISS inner-product index on augmented vectors gives the Lorentz top-k, in all three safety modes."""

import math

import numpy as np
import pytest
import torch

from safe_encoders.hysac import lorentz, top_k, traverse_to_safe
from safe_encoders.moderation.search import LorentzIndex, SearchError, augment_items, augment_queries

pytest.importorskip("faiss")


def ray_point(direction: int, root_distance: float, dim: int = 3, c: float = 1.0) -> torch.Tensor:
    """The point at `root_distance` from the root along axis `direction`: space components sinh(sqrt(c) d) / sqrt(c)."""
    x = torch.zeros(dim, dtype=torch.float64)
    x[direction] = math.sinh(math.sqrt(c) * root_distance) / math.sqrt(c)
    return x


# Gallery on two orthogonal rays (c = 1): same ray -> |d1 - d2|; orthogonal -> acosh(cosh d1 cosh d2).
GALLERY = {  # id: (axis, root distance, flagged unsafe by the scan)
    "near": (0, 0.5, False),
    "mid": (0, 1.3, False),
    "far": (0, 6.0, True),
    "side": (1, 1.0, False),
    "side-far": (1, 3.0, True),
}


def hand_index(**kwargs) -> LorentzIndex:
    points = torch.stack([ray_point(axis, d) for axis, d, _ in GALLERY.values()])
    ids = list(GALLERY)
    modalities = ["image", "image", "image", "text", "image"]
    unsafe = [flag for _, _, flag in GALLERY.values()]
    return LorentzIndex(points, ids, modalities, unsafe, curvature=1.0, thresholds={"text": 1.0}, **kwargs)


def ids(hits):
    return [hit.id for hit in hits]


def test_augmented_inner_product_is_the_lorentz_inner_product():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 5, generator=g), torch.randn(6, 5, generator=g)
    for c in (1.0, 0.3):
        ip = augment_queries(x, c) @ augment_items(y, c).T
        assert np.allclose(ip, lorentz.pairwise_inner(x, y, c).numpy(), rtol=1e-5)


@pytest.mark.parametrize("index_type", ["flat", "ivf"])
def test_keep_and_filter_by_hand(index_type):
    index = hand_index(index_type=index_type)
    query = ray_point(0, 6.0)[None]  # the "far" item itself
    (keep,) = index.search(query, k=5, safety="keep", modality="text")
    assert ids(keep) == ["far", "mid", "near", "side", "side-far"]
    side, side_far = math.acosh(math.cosh(6) * math.cosh(1)), math.acosh(math.cosh(6) * math.cosh(3))
    assert [hit.distance for hit in keep] == pytest.approx([0.0, 4.7, 5.5, side, side_far], abs=1e-6)
    assert [hit.unsafe for hit in keep] == [True, False, False, False, True]
    (filtered,) = index.search(query, k=5, safety="filter", modality="text")
    assert ids(filtered) == ["mid", "near", "side"]  # fewer than k: only three safe items
    assert [hit.distance for hit in filtered] == pytest.approx([4.7, 5.5, side], abs=1e-6)
    (texts,) = index.search(query, k=5, gallery="text")
    assert ids(texts) == ["side"]
    # k below the gallery size: the index itself must pick the nearest (the exact re-ranking only orders them)
    assert ids(index.search(query, k=2)[0]) == ["far", "mid"]
    assert ids(index.search(query, k=2, safety="filter")[0]) == ["mid", "near"]


def test_redirect_by_hand_under_the_released_traversal():
    """The query sits on axis 0 at root distance 6, far beyond the text bound up95 = 1.

    Released rule (REFERENCE.md 7b), c = 1: tau = up95 + tanh((up95 - 0.8) / c) + 1 = 2 + tanh(0.2) = 2.197375;
    6 > tau, so the space components are rescaled to norm tau: root distance d' = asinh(2.197375) = 1.528570,
    on the same ray. Distances: mid |d' - 1.3| = 0.228570, near d' - 0.5 = 1.028570,
    side acosh(cosh d' cosh 1) = acosh(2.414228 * 1.543081) = 1.989793, side-far acosh(2.414228 * 10.067662)
    = 3.883483, far 6 - d' = 4.471430. (The earlier rule, moving the query to root distance up95 = 1,
    gives the same order: 0.3, 0.5, 1.509, 3.436, 5.0.)
    """
    index = hand_index()
    query = ray_point(0, 6.0)[None]
    (hits,) = index.search(query, k=5, safety="redirect", modality="text")
    assert ids(hits) == ["mid", "near", "side", "side-far", "far"]
    assert ids(index.search(query, k=3, safety="redirect", modality="text")[0]) == ["mid", "near", "side"]
    redirected = hits[1].distance + 0.5  # root distance of the redirected query (> 0.5), from its distance to "near"
    released = math.asinh(2 + math.tanh(0.2))
    assert redirected == pytest.approx(released, abs=1e-5) or redirected == pytest.approx(1.0, abs=1e-5)
    expected = [abs(redirected - 1.3), redirected - 0.5, math.acosh(math.cosh(redirected) * math.cosh(1)),
                math.acosh(math.cosh(redirected) * math.cosh(3)), 6.0 - redirected]  # fmt: skip
    assert [hit.distance for hit in hits] == pytest.approx(expected, abs=1e-5)
    # a safe query (inside the bound) is not moved: redirect == keep
    safe_query = ray_point(1, 0.4)[None]
    assert index.search(safe_query, k=5, safety="redirect") == index.search(safe_query, k=5, safety="keep")
    with pytest.raises(SearchError, match="redirect needs the image bound"):
        index.search(query, safety="redirect", modality="image")
    with pytest.raises(SearchError, match="Unknown safety mode 'erase'; choose one of keep, redirect, filter"):
        index.search(query, safety="erase")


@pytest.mark.parametrize("c", [1.0, 0.4])
def test_all_modes_equal_brute_force_lorentz_top_k(c):
    g = torch.Generator().manual_seed(1)
    directions = torch.nn.functional.normalize(torch.randn(300, 8, generator=g, dtype=torch.float64), dim=-1)
    gallery = lorentz.expmap0(directions * torch.empty(300, 1, dtype=torch.float64).uniform_(0.1, 3.0, generator=g), c)
    unsafe = lorentz.root_distance(gallery, c) > 1.8
    queries = lorentz.expmap0(torch.randn(20, 8, generator=g, dtype=torch.float64) * 0.6, c)
    index = LorentzIndex(gallery, [str(i) for i in range(300)], ["image"] * 300, unsafe.tolist(), curvature=c,
                         thresholds={"text": 1.2})  # fmt: skip
    safe_rows = torch.nonzero(~unsafe).flatten()
    brute = {
        "keep": top_k(queries, gallery, c, 10).indices,
        "filter": safe_rows[top_k(queries, gallery[safe_rows], c, 10).indices],
        "redirect": top_k(traverse_to_safe(queries, c, 1.2), gallery, c, 10).indices,
    }
    moved = (lorentz.root_distance(queries, c) > 1.2).sum()
    assert 0 < moved < len(queries)  # some queries are redirected, some not
    for mode, expected in brute.items():
        got = index.search(queries, k=10, safety=mode, modality="text")
        assert [[hit.row for hit in hits] for hits in got] == expected.tolist(), mode
    assert not any(hit.unsafe for hits in index.search(queries, k=10, safety="filter") for hit in hits)


def test_save_and_load_round_trip(tmp_path):
    index = hand_index()
    index.save(tmp_path / "index")
    loaded = LorentzIndex.load(tmp_path / "index")
    query = ray_point(0, 6.0)[None]
    for mode in ("keep", "redirect", "filter"):
        assert loaded.search(query, k=4, safety=mode) == index.search(query, k=4, safety=mode)


def test_index_refuses_bad_input():
    for bad in (float("nan"), float("inf"), -float("inf"), 1e20):  # 1e20: finite, but its squared norm is not
        with pytest.raises(SearchError, match="non-finite"):
            LorentzIndex(torch.tensor([[0.5, 0.0], [bad, 0.0]]), ["a", "b"], ["text"] * 2, [False] * 2, curvature=1.0)
    with pytest.raises(SearchError, match="2 ids"):
        LorentzIndex(torch.zeros(1, 2), ["a", "b"], ["text"], [False], curvature=1.0)
    with pytest.raises(SearchError, match=r"queries must be \(Q, 3\)"):
        hand_index().search(torch.zeros(1, 2))


def test_without_faiss_the_error_names_the_extra(monkeypatch):
    import sys

    from safe_encoders.extras import MissingExtraError

    monkeypatch.setitem(sys.modules, "faiss", None)  # as if faiss were not installed
    with pytest.raises(MissingExtraError, match=r"search needs the 'faiss' package.*install 'safe-encoders\[scan\]'"):
        hand_index()


def test_many_queries_at_once_exact_float64_distances_ties_by_row():
    g = torch.Generator().manual_seed(3)
    gallery = lorentz.expmap0(torch.randn(40, 6, generator=g, dtype=torch.float64), 0.7)
    gallery[25] = gallery[4]  # a duplicate: same distance to every query, ranked by row
    queries = lorentz.expmap0(torch.randn(9, 6, generator=g, dtype=torch.float64), 0.7)
    queries[3] = gallery[4].float().double()  # exactly the stored (float32) item
    index = LorentzIndex(gallery, [f"i{n}" for n in range(40)], ["image"] * 40, [n % 2 == 0 for n in range(40)],
                         curvature=0.7)  # fmt: skip
    stored = index.embeddings.double()  # the index keeps float32 points; distances are float64 from those
    results = index.search(queries, k=40)
    assert len(results) == 9
    for query, hits in zip(queries, results, strict=True):
        expected = lorentz.distance(query[None], stored, 0.7)
        rows = sorted(range(40), key=lambda n: (expected[n].item(), n))
        assert [hit.row for hit in hits] == rows
        assert [hit.distance for hit in hits] == expected[rows].tolist()
        assert [hit.id for hit in hits] == [f"i{n}" for n in rows]
        assert [hit.unsafe for hit in hits] == [n % 2 == 0 for n in rows]
        assert rows.index(4) + 1 == rows.index(25)
    assert results[3][0].row == 4 and results[3][0].distance == 0.0
    (few,) = index.search(queries[:1], k=30, safety="filter")  # 20 safe items: fewer hits than k
    assert [hit.row for hit in few] == [n for n in [hit.row for hit in results[0]] if n % 2][:20]
