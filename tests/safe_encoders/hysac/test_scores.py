"""Classification (unsafe_score, bounds, calibration) and safety traversal / retrieval."""

import math

import pytest
import torch

from safe_encoders import CorruptCheckpointError
from safe_encoders.hysac import (
    Gallery,
    HySACBounds,
    calibrate_threshold,
    compute_bounds,
    lorentz,
    release_tau,
    retrieve,
    top_k,
    traverse_as_released,
    traverse_to_safe,
    unsafe_score,
)
from tests.safe_encoders.hysac.tiny_hysac import sample_inputs, tiny_hysac
from tests.tiny_models import clip_tokenizer

# --------------------------------------------------------------------------- bounds


def test_compute_bounds_statistics():
    bounds = compute_bounds({"S": torch.arange(1.0, 101.0), "V": torch.tensor([2.0, 4.0])})
    s = bounds.stats["S"]
    assert s["count"] == 100 and s["mean"] == pytest.approx(50.5) and s["min"] == 1 and s["max"] == 100
    assert s["up_95"] == pytest.approx(1 + 0.95 * 99) and s["low_5"] == pytest.approx(1 + 0.05 * 99)
    assert bounds.stats["V"]["std"] == pytest.approx(1.0)
    assert bounds.threshold("text") == pytest.approx(95.05) and bounds.threshold("image") == pytest.approx(3.9)
    assert HySACBounds.from_dict(bounds.to_dict()) == bounds


def test_bounds_from_the_authors_layout_and_malformed_files():
    bounds = HySACBounds.from_dict({"S": {"up_95": 1.5, "note": "text"}, "V": {"up_95": 2}, "meta": "x"})
    assert bounds.threshold("text") == 1.5 and bounds.threshold("image") == 2.0
    assert bounds.stats["S"] == {"up_95": 1.5}
    with pytest.raises(KeyError, match=r"no V\.up_95"):
        HySACBounds.from_dict({"S": {"up_95": 1.0}}).threshold("image")
    with pytest.raises(CorruptCheckpointError, match="no group statistics"):
        HySACBounds.from_dict({"S": 1.0})


def test_calibrate_threshold_balanced_accuracy_by_hand():
    scores = torch.tensor([0.1, 0.2, 0.3, 0.4])
    assert calibrate_threshold(scores, torch.tensor([0, 0, 1, 1])) == pytest.approx(0.25)
    # overlapping: safe 0.1, 0.35, 0.2; unsafe 0.3, 0.5, 0.6 -> best cut between 0.2 and 0.3 (BA 5/6)
    scores = torch.tensor([0.1, 0.35, 0.2, 0.3, 0.5, 0.6])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    threshold = calibrate_threshold(scores, labels)
    assert threshold == pytest.approx(0.25)
    predicted = scores > threshold
    tpr = (predicted & labels.bool()).sum() / 3
    tnr = (~predicted & ~labels.bool()).sum() / 3
    assert ((tpr + tnr) / 2).item() == pytest.approx(5 / 6)
    # ties cannot be split
    assert calibrate_threshold(torch.tensor([0.5, 0.5, 0.9]), torch.tensor([0, 1, 1])) == pytest.approx(0.7)


def test_calibrate_threshold_safe_percentile_and_errors():
    scores = torch.arange(0.0, 11.0)
    labels = torch.tensor([0] * 11)
    assert calibrate_threshold(scores, labels, method="safe_percentile") == pytest.approx(9.5)
    assert calibrate_threshold(scores, labels, method="safe_percentile", percentile=50) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="both safe and unsafe"):
        calibrate_threshold(scores, labels)
    with pytest.raises(ValueError, match="unknown method"):
        calibrate_threshold(scores, labels, method="auc")
    with pytest.raises(ValueError, match="11 scores but 2 labels"):
        calibrate_threshold(scores, torch.tensor([0, 1]))


# ------------------------------------------------------------------------ unsafe_score


def test_unsafe_score_on_pixel_values_uses_the_bounds_and_batches():
    model = tiny_hysac()
    _, pixel_values = sample_inputs(n=5)
    with torch.no_grad():
        distances = model.root_distance(model.encode_image(pixel_values))
    middle = distances.median().item()
    model.bounds = HySACBounds.from_dict({"V": {"up_95": middle}})
    result = model.unsafe_score(pixel_values=pixel_values, batch_size=2)
    assert result.text is None and len(result.image) == 5
    assert torch.allclose(result.image.scores, distances, atol=1e-6)
    assert torch.equal(result.image.unsafe, distances > middle)
    assert result.image.unsafe.sum() == 2 and result.image.threshold == middle
    override = model.unsafe_score(pixel_values=pixel_values, image_threshold=-1.0)
    assert override.image.unsafe.all()


def test_unsafe_score_needs_inputs_and_a_threshold():
    model = tiny_hysac()
    with pytest.raises(ValueError, match="pass texts=, images= or pixel_values="):
        model.unsafe_score()
    with pytest.raises(ValueError, match="has no bounds"):
        model.unsafe_score(pixel_values=sample_inputs()[1])
    with pytest.raises(ValueError, match="No tokenizer"):
        model.unsafe_score(texts=["a cat"], text_threshold=1.0)


def test_unsafe_score_on_raw_texts_and_images():
    from PIL import Image
    from transformers import CLIPImageProcessor

    model = tiny_hysac()
    model.tokenizer = clip_tokenizer()
    model.image_processor = CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30})
    texts = ["a photo of a cat", "a photo of a dog", "an empty street"]
    tokens = model.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        distances = model.root_distance(model.encode_text(tokens["input_ids"], tokens["attention_mask"]))
    result = unsafe_score(model, texts=texts, text_threshold=distances[1].item(), batch_size=2)
    assert torch.allclose(result.text.scores, distances, atol=1e-5)
    assert result.text.unsafe.tolist() == (distances > distances[1]).tolist()
    images = [Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("RGB", (30, 30), (0, 0, 0))]
    both = model.unsafe_score(texts="a cat", images=images, text_threshold=0.0, image_threshold=0.0)
    assert len(both.text) == 1 and len(both.image) == 2 and both.image.scores[0] != both.image.scores[1]
    # float images in [0, 1] give the same scores as their uint8 versions
    floats = [torch.tensor([[[200 / 255]], [[10 / 255]], [[10 / 255]]]).expand(3, 30, 40).permute(1, 2, 0).numpy()]
    assert model.unsafe_score(images=floats, image_threshold=0.0).image.scores[0] == pytest.approx(
        both.image.scores[0].item(), abs=1e-4
    )


# --------------------------------------------------------------------------- traversal


def _points(c=1.0):
    u = torch.nn.functional.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    radii = torch.tensor([0.2, 0.5, 0.9, 1.5, 2.5, 4.0])
    return lorentz.expmap0(u * radii[:, None], c), radii, u


@pytest.mark.parametrize("c", [1.0, 0.5])
def test_traversal_moves_only_points_beyond_the_boundary_onto_it(c):
    x, radii, u = _points(c)
    moved = traverse_to_safe(x, c, 1.0)
    inside = radii <= 1.0
    assert torch.equal(moved[inside], x[inside])
    assert torch.allclose(lorentz.root_distance(moved[~inside], c), torch.ones(3), atol=1e-5)
    assert torch.allclose(torch.nn.functional.normalize(moved, dim=-1), u, atol=1e-6)  # same direction
    # the move is along the geodesic through the root: the distance moved is d - 1
    assert torch.allclose(lorentz.distance(x[~inside], moved[~inside], c), radii[~inside] - 1, atol=1e-4)


def test_traversal_strength_margin_and_per_point_boundaries():
    x, radii, _ = _points()
    half = traverse_to_safe(x, 1.0, 1.0, strength=0.5)
    assert torch.allclose(lorentz.root_distance(half[3:], 1.0), (radii[3:] + 1) / 2, atol=1e-5)
    assert torch.equal(traverse_to_safe(x, 1.0, 1.0, strength=0.0), x)
    inside = traverse_to_safe(x, 1.0, 1.0, margin=0.3)
    assert torch.allclose(lorentz.root_distance(inside[3:], 1.0), torch.full((3,), 0.7), atol=1e-5)
    per_point = traverse_to_safe(x, 1.0, torch.tensor([0.1, 0.1, 0.1, 5.0, 5.0, 3.0]))
    assert torch.allclose(
        lorentz.root_distance(per_point, 1.0), torch.tensor([0.1, 0.1, 0.1, 1.5, 2.5, 3.0]), atol=1e-5
    )
    assert torch.allclose(lorentz.root_distance(traverse_to_safe(x, 1.0, 1.0, strength=10.0), 1.0)[3:], torch.zeros(3))
    with pytest.raises(ValueError, match="strength must be >= 0"):
        traverse_to_safe(x, 1.0, 1.0, strength=-1)


def test_model_traverse_uses_the_modality_boundary():
    model = tiny_hysac(bounds=HySACBounds.from_dict({"S": {"up_95": 0.3}, "V": {"up_95": 0.6}}))
    x, _, _ = _points()
    for modality, bound in (("text", 0.3), ("image", 0.6)):
        geodesic = model.traverse(x, modality, method="geodesic")
        assert torch.allclose(lorentz.root_distance(geodesic, 1.0).max(), torch.tensor(bound), atol=1e-5)
    # the release (default): c = 1, tau = up95 + tanh(up95 - 0.8) + 1, by hand
    with torch.no_grad():
        text, image = model.traverse(x, "text"), model.traverse(x, "image")
    tau_text, tau_image = 1.3 - 0.46211716, 1.6 - 0.19737532  # tanh(-0.5), tanh(-0.2)
    norms = torch.linalg.vector_norm(x, dim=-1)
    # root distances 0.2 .. 4.0: text moves the last four (> 0.8379), image the last three (> 1.4026)
    assert torch.equal(text[:2], x[:2]) and torch.equal(image[:3], x[:3])
    assert torch.allclose(torch.linalg.vector_norm(text[2:], dim=-1), torch.full((4,), tau_text), atol=1e-6)
    assert torch.allclose(torch.linalg.vector_norm(image[3:], dim=-1), torch.full((3,), tau_image), atol=1e-6)
    assert torch.allclose(text[2:] / tau_text, x[2:] / norms[2:, None], atol=1e-6)  # direction kept
    with pytest.raises(ValueError, match="no strength or margin"):
        model.traverse(x, "text", strength=0.5)
    with pytest.raises(ValueError, match="unknown traversal 'nope'"):
        model.traverse(x, "text", method="nope")


# up95 = 1: tau = 2 + tanh(0.2 / c); tanh(0.4) = 0.3799489623 (c = 0.5), tanh(0.1) = 0.0996679946 (c = 2)
RELEASE_CASES = {
    # c: (tau, outside point (root distance > tau), inside point with |x| > tau but root distance < tau)
    0.5: (2.3799489623, (3.0, 4.0), (0.0, 2.5)),  # root distances 2.808 and 1.871
    2.0: (2.0996679946, (6.0, 8.0), (3.0, 4.0)),  # root distances 2.364 and 1.877
}


@pytest.mark.parametrize("c", sorted(RELEASE_CASES))
def test_released_traversal_by_hand(c):
    tau, outside, inside = RELEASE_CASES[c]
    assert release_tau(1.0, c).item() == pytest.approx(tau, abs=1e-9)
    x = torch.tensor([outside, inside], dtype=torch.float64)
    out = traverse_as_released(x, c, 1.0)
    n = math.hypot(*outside)
    # the outside point's space components are rescaled to Euclidean norm tau; the inside one is untouched
    assert out[0].tolist() == pytest.approx([tau * outside[0] / n, tau * outside[1] / n], abs=1e-9)
    assert torch.equal(out[1], x[1])
    # so its root distance is asinh(sqrt(c) tau) / sqrt(c), not tau (the geodesic traversal would give tau)
    assert lorentz.root_distance(out[:1], c).item() == pytest.approx(math.asinh(math.sqrt(c) * tau) / math.sqrt(c))
    # batched = one query at a time (as the release runs it), also with a per-row bound
    rows = torch.cat([traverse_as_released(x[i : i + 1], c, 1.0) for i in range(2)])
    assert torch.equal(out, rows)
    per_row = traverse_as_released(x, c, torch.tensor([1.0, 0.0], dtype=torch.float64))
    tau_low = 0.0 + math.tanh(-0.8 / c) + 1  # the inside point is beyond the smaller tau of bound 0
    assert torch.linalg.vector_norm(per_row[1]).item() == pytest.approx(tau_low, abs=1e-9)
    assert torch.equal(per_row[0], out[0])


def test_top_k_matches_a_full_sort_in_chunks():
    g = torch.Generator().manual_seed(1)
    queries = lorentz.expmap0(torch.randn(7, 5, generator=g), 1.3)
    gallery = lorentz.expmap0(torch.randn(11, 5, generator=g), 1.3)
    result = top_k(queries, gallery, 1.3, k=3, chunk_size=2)
    full = lorentz.pairwise_distance(queries, gallery, 1.3)
    order = full.argsort(dim=1)[:, :3]
    assert torch.equal(result.indices, order)
    assert torch.allclose(result.distances, full.gather(1, order))
    assert top_k(queries, gallery, 1.3, k=50).indices.shape == (7, 11)


def test_a_prepared_gallery_gives_the_same_top_k():
    g = torch.Generator().manual_seed(4)
    queries = lorentz.expmap0(torch.randn(13, 6, generator=g), 0.6)
    points = lorentz.expmap0(torch.randn(50, 6, generator=g), 0.6)
    gallery = Gallery.of(points, 0.6)
    assert torch.allclose(gallery.time, lorentz.time_component(points, 0.6))
    prepared, bare = top_k(queries, gallery, 0.6, k=5, chunk_size=4), top_k(queries, points, 0.6, k=5)
    assert torch.equal(prepared.indices, bare.indices)
    assert torch.allclose(prepared.distances, bare.distances, atol=1e-6)  # the matmul rounds by chunk size
    full = lorentz.pairwise_distance(queries, points, 0.6)
    assert torch.allclose(prepared.distances, full.gather(1, prepared.indices), atol=1e-5)
    assert torch.equal(prepared.indices, full.argsort(dim=1)[:, :5])
    with pytest.raises(ValueError, match=r"curvature 0\.6"):
        top_k(queries, gallery, 1.0, k=5)


def test_retrieval_with_traversal_finds_the_safe_counterpart():
    # gallery: safe items near the root, their unsafe versions farther out along the same directions
    c = 1.0
    directions = torch.nn.functional.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(2)), dim=-1)
    safe = lorentz.expmap0(directions * 0.8, c)
    unsafe = lorentz.expmap0(directions * 2.5, c)
    gallery = torch.cat([safe, unsafe])
    queries = lorentz.expmap0(directions * 2.4, c)  # unsafe queries
    plain = retrieve(queries, gallery, c)
    assert plain.indices[:, 0].tolist() == [4, 5, 6, 7]
    traversed = retrieve(queries, gallery, c, boundary=1.0, margin=0.2)
    assert traversed.indices[:, 0].tolist() == [0, 1, 2, 3]
    # safe queries (inside the boundary) are untouched by traversal
    safe_queries = lorentz.expmap0(directions * 0.7, c)
    assert torch.equal(
        retrieve(safe_queries, gallery, c, boundary=1.0).indices, retrieve(safe_queries, gallery, c).indices
    )
    assert math.isclose(traversed.distances[0, 0].item(), 0.0, abs_tol=1e-3)
