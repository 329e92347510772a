"""`search` over a scan folder never serves stale verdicts, and an empty gallery is a clear error."""

import pytest
import torch

from safe_encoders.cli import main
from safe_encoders.hysac import embed_texts
from safe_encoders.moderation import InputSpec, LorentzIndex, ScanConfig, SearchError, build_index, read_scan, scan
from tests.safe_encoders.moderation.scan_data import TEXTS, write_table

pytestmark = [pytest.mark.usefixtures("one_torch_thread")]
pytest.importorskip("faiss")
pytest.importorskip("pyarrow")


def test_a_rescan_with_other_verdicts_rebuilds_the_index(model, tmp_path):
    path = write_table(tmp_path / "t.jsonl", [{"text": text} for text in TEXTS])
    scores = sorted(model.unsafe_score(texts=TEXTS).text.scores.tolist())
    out = tmp_path / "out"
    low, high = (scores[1] + scores[2]) / 2, (scores[3] + scores[4]) / 2
    scan(model, InputSpec(str(path)), out, ScanConfig(thresholds={"text": high}, embeddings=True, progress=False))
    assert sum(build_index(out).unsafe) == 2
    for shard in [*out.glob("part-*.parquet"), out / ".scan.json"]:  # a new scan into the same folder
        shard.unlink()
    scan(model, InputSpec(str(path)), out, ScanConfig(thresholds={"text": low}, embeddings=True, progress=False))
    flagged = {row["id"] for row in read_scan(out).to_pylist() if row["unsafe"]}
    assert len(flagged) == 4
    index = build_index(out)
    query = embed_texts(model, ["a cat"]).float()
    (hits,) = index.search(query, k=6, safety="filter")
    assert len(hits) == 2 and not {hit.id for hit in hits} & flagged


def test_all_items_unreadable_is_a_clear_error(model_dir, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        (folder / f"{i}.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    argv = ["scan", str(folder), "--out", str(out), "--model", str(model_dir), "--embeddings", "--no-progress"]
    assert main(argv) == 0
    with pytest.raises(SearchError, match="none of the scan's 2 rows has an embedding"):
        build_index(out)
    capsys.readouterr()
    assert main(["search", str(out), "--text", "a cat"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing to search" in err


def test_an_empty_or_fully_excluded_gallery_is_refused():
    with pytest.raises(SearchError, match="empty gallery"):
        LorentzIndex(torch.zeros(0, 3), [], [], [], curvature=1.0)
    index = LorentzIndex(torch.ones(2, 3), ["a", "b"], ["image", "image"], [True, True], curvature=1.0)
    with pytest.raises(SearchError, match="no item is left"):
        index.search(torch.ones(1, 3), k=1, safety="filter")
    with pytest.raises(SearchError, match="no item is left"):
        index.search(torch.ones(1, 3), k=1, gallery="text")
    assert len(index.search(torch.ones(1, 3), k=2)[0]) == 2
