"""eval.hysac.run: AUROC and accuracy by hand, traversal on hand-placed points, and the CLI on a tiny random HySAC."""

import csv
import json
import math

import pytest
import torch

from eval.hysac.run import (
    auroc,
    classification_metrics,
    evaluate_hysac,
    hysac_retrieval,
    traversal_boundaries,
    write_hysac_reports,
)
from safe_encoders.hysac import HySACBounds, compute_bounds, lorentz

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_auroc_by_hand():
    # positives 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of 4 pairs ordered -> 0.75
    assert auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]).bool()) == pytest.approx(0.75)
    # a tie between a positive and a negative counts one half: (0.5 + 1 + 1 + 1) / 4
    assert auroc(torch.tensor([0.5, 0.5, 0.2, 0.9]), torch.tensor([True, False, False, True])) == pytest.approx(0.875)
    assert auroc(torch.tensor([3.0, 1.0]), torch.tensor([True, False])) == 1.0
    assert auroc(torch.tensor([1.0, 3.0]), torch.tensor([True, False])) == 0.0
    with pytest.raises(ValueError):
        auroc(torch.tensor([1.0, 2.0]), torch.tensor([True, True]))


def test_auroc_matches_pair_counting_on_random_scores():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (40,), generator=g).float()  # many ties
    labels = torch.rand(40, generator=g) > 0.4
    pos, neg = scores[labels], scores[~labels]
    pairs = (pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()
    assert auroc(scores, labels) == pytest.approx(pairs.mean().item())


def test_classification_metrics_by_hand():
    m = classification_metrics(torch.tensor([0.1, 0.2, 0.6]), torch.tensor([0.5, 0.7]), threshold=0.55)
    # safe: 0.1, 0.2 pass, 0.6 flagged; unsafe: 0.7 flagged, 0.5 missed -> 3 of 5 right
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["tnr"] == pytest.approx(2 / 3) and m["tpr"] == pytest.approx(1 / 2)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    # AUROC: unsafe 0.5 beats 0.1, 0.2; 0.7 beats all three -> 5 / 6
    assert m["auroc"] == pytest.approx(5 / 6) and m["threshold"] == 0.55


def ray_points(radii: list[float], angles: list[float]) -> torch.Tensor:
    """Points at root distances `radii` (c = 1) in the directions `angles` of the plane."""
    r = torch.tensor(radii, dtype=torch.float64)
    a = torch.tensor(angles, dtype=torch.float64)
    return torch.stack([torch.cos(a), torch.sin(a)], -1) * torch.sinh(r)[:, None]


@pytest.fixture
def placed():
    """Three quadruplets on three rays: S at 0.5, V at 1.0, U at 2.0, G at 2.3 from the root (c = 1)."""
    angles = [0.0, 2.0, 4.0]
    emb = {
        "text_safe": ray_points([0.5] * 3, angles),
        "image_safe": ray_points([1.0] * 3, angles),
        "text_unsafe": ray_points([2.0] * 3, angles),
        "image_unsafe": ray_points([2.3] * 3, angles),
    }
    groups = {"S": "text_safe", "V": "image_safe", "U": "text_unsafe", "G": "image_unsafe"}
    bounds = compute_bounds({g: lorentz.root_distance(emb[k], 1.0) for g, k in groups.items()})
    return emb, bounds


def test_traversal_turns_unsafe_top1_into_safe(placed):
    emb, bounds = placed
    plain = hysac_retrieval(emb, 1.0, ks=(1,))
    # T* at 2.0 is 0.3 from G (2.3) and 1.0 from V (1.0) on its ray: unsafe top-1, wrong ground truth
    assert plain["unsafe_text_top1_safe_share"] == 0.0 and plain["ut2v_r1"] == 0.0
    assert plain["t2v_r1"] == plain["v2t_r1"] == 1.0
    boundaries = traversal_boundaries(bounds, "gallery")
    assert boundaries["text"] == pytest.approx(1.0) and boundaries["image"] == pytest.approx(0.5)
    moved = hysac_retrieval(emb, 1.0, boundaries=boundaries, method="geodesic", ks=(1,))
    # pulled to radius 1.0 on its ray, T* lands on its safe image V (and V* on its safe text S)
    assert moved["unsafe_text_top1_safe_share"] == 1.0 and moved["ut2v_r1"] == 1.0
    assert moved["unsafe_image_top1_safe_share"] == 1.0 and moved["uv2t_r1"] == 1.0
    assert moved["t2v_r1"] == plain["t2v_r1"]  # safe queries are never moved
    # only the queries move: unsafe images pulled to 0.2 as *queries* must stay at 2.3 in the text queries' gallery
    assert (
        hysac_retrieval(emb, 1.0, boundaries={"text": 10.0, "image": 0.2}, method="geodesic", ks=(1,))[
            "unsafe_text_top1_safe_share"
        ]
        == 0
    )
    own = traversal_boundaries(bounds, "query")
    assert own["text"] == pytest.approx(0.5) and own["image"] == pytest.approx(1.0)


def test_evaluate_and_write_reports(placed, tmp_path):
    emb, bounds = placed
    report = evaluate_hysac("placed", emb, 1.0, bounds, ks=(1, 2))
    assert report.classification["text"]["auroc"] == 1.0 and report.classification["image"]["auroc"] == 1.0
    # thresholds are the safe 95th percentiles (0.5 / 1.0): every item is on the right side
    assert report.classification["text"]["accuracy"] == 1.0
    paths = write_hysac_reports([report], tmp_path, "hand", ks=(1, 2))
    rows = list(csv.DictReader(paths["csv"].open()))
    assert rows[0]["model"] == "placed" and float(rows[0]["unsafe_text_top1_safe_share_traversal"]) == 1.0
    retrieval = list(csv.DictReader((tmp_path / "retrieval.csv").open()))
    models = {r["model"] for r in retrieval}
    assert models == {"placed", "placed + traversal"}
    assert "placed + traversal" in (tmp_path / "retrieval.md").read_text()


def test_cli_on_a_tiny_random_hysac(tmp_path):
    from eval.__main__ import main
    from eval.data.synthetic import build_image_processor, build_tokenizer
    from safe_encoders.hysac import HySAC
    from train.tiny_clip import tiny_clip

    tokenizer = build_tokenizer(24)
    torch.manual_seed(0)
    text, vision = tiny_clip(tokenizer, 32, width=32, layers=1, projection_dim=16)
    bounds = HySACBounds(stats={"S": {"up_95": 0.4}, "V": {"up_95": 0.6}})
    model = HySAC(
        text.eval(),
        vision.eval(),
        bounds=bounds,
        base_model="tiny",
        tokenizer=tokenizer,
        image_processor=build_image_processor(32),
    )
    folder = model.save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    assert main(["hysac", "--model", f"tiny={folder}", "--synthetic", "12", "--out", str(out)]) == 0
    saved = json.loads((out / "hysac.json").read_text())[0]
    assert saved["model"] == "tiny" and saved["boundaries"] == {"text": 0.4, "image": 0.6}
    for modality in ("text", "image"):
        m = saved["classification"][modality]
        assert 0.0 <= m["auroc"] <= 1.0 and 0.0 <= m["accuracy"] <= 1.0 and not math.isnan(m["auroc"])
    row = next(csv.DictReader((out / "hysac.csv").open()))
    assert float(row["text_auroc"]) == pytest.approx(saved["classification"]["text"]["auroc"], abs=1e-6)
    assert (out / "retrieval.tex").exists() and (out / "hysac.md").exists()
    from tests.eval.builders import assert_digested, read_provenance

    record, digests = read_provenance(out, "hysac")
    assert_digested(digests, folder)
    assert record["seeds"] == {"seed": 2} and record["arguments"]["synthetic"] == 12
