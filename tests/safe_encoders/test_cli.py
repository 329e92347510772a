"""The `safe-encoders` command: help, scan then search end to end on a tiny HySAC, one-line errors (exit 2)."""

import json
import sys

import pytest
import torch

from safe_encoders.cli import main
from tests.safe_encoders.moderation.scan_data import (
    expected_image_scores,
    image_folder,
    png_bytes,
    saved_tiny_hysac,
    write_table,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return saved_tiny_hysac(tmp_path_factory.mktemp("model") / "tiny-hysac")


def test_help_names_both_commands_and_their_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "scan" in out and "search" in out
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    out = capsys.readouterr().out
    assert "--safety {keep,redirect,filter}" in out and "redirect  an unsafe query" in out


def test_scan_then_search_end_to_end(model_dir, tmp_path, capsys):
    from safe_encoders.hysac import HySAC, lorentz, top_k
    from safe_encoders.moderation.scan import read_scan

    model = HySAC.from_pretrained(model_dir)
    folder = image_folder(tmp_path / "photos", n=6)
    threshold = expected_image_scores(model, [png_bytes(i) for i in range(6)]).median().item()
    out = tmp_path / "scan"
    args = ["scan", str(folder), "--out", str(out), "--model", str(model_dir), "--embeddings", "--no-progress",
            "--image-threshold", str(threshold)]  # fmt: skip
    assert main([*args, "--batch-size", "4"]) == 0
    assert "scanned 7 items" in (printed := capsys.readouterr().out) and "1 unreadable" in printed
    assert main(args) == 0  # the same command again: nothing left to do
    assert "scanned 0 items" in capsys.readouterr().out
    table = read_scan(out)
    table = table.filter(table.column("error").is_null())
    gallery = torch.tensor(table.column("embedding").to_pylist())
    with torch.no_grad():
        tokens = model.tokenizer(["a photo of a cat"], return_tensors="pt")
        query = model.encode_text(tokens["input_ids"], tokens["attention_mask"])
    expected = [table.column("id")[i].as_py() for i in top_k(query, gallery, model.curvature.detach(), 3).indices[0]]
    assert main(["search", str(out), "--text", "a photo of a cat", "--k", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [hit["id"] for hit in result["hits"]] == expected
    assert (out / ".search-index" / "index.faiss").exists()
    assert main(["search", str(out), "--text", "a photo of a cat", "--k", "6", "--safety", "filter", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    flagged = {row["id"] for row in table.to_pylist() if row["unsafe"]}
    assert len(flagged) == 3 and len(hits) == 6 - len(flagged) and not {hit["id"] for hit in hits} & flagged
    assert lorentz.root_distance(query, model.curvature.detach()).item() > 0


def test_errors_are_one_line_with_exit_status_2(model_dir, tmp_path, capsys, monkeypatch):
    table = str(write_table(tmp_path / "t.jsonl", [{"text": "a"}]))
    cases = [
        (["scan", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], "nope: no such file or folder."),
        (["scan", table, "--out", str(tmp_path / "o2"), "--engine", "ray"], "--engine ray reads Parquet"),
        (["search", str(tmp_path), "--text", "a"], "no .scan.json"),
    ]
    for argv, message in cases:
        assert main([*argv, "--model", str(model_dir)] if argv[0] == "scan" else argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"safe-encoders {argv[0]}: error: ") and message in err, err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the `scale` extra were not installed
    parquet = str(write_table(tmp_path / "t.parquet", [{"key": "a", "text": "a"}]))
    assert main(["scan", parquet, "--out", str(tmp_path / "o3"), "--engine", "ray", "--id-column", "key"]) == 2
    assert "--engine ray needs the 'ray' package, which is not installed: pip install 'safe-encoders[scale]'" in (
        capsys.readouterr().err
    )
    plain = tmp_path / "plain"
    assert main(["scan", table, "--out", str(plain), "--model", str(model_dir), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["search", str(plain), "--text", "a"]) == 2
    assert "the scan has no embeddings; rescan with --embeddings" in capsys.readouterr().err


def test_each_launched_process_takes_its_share():
    from safe_encoders.cli.scan import process_share

    assert process_share(0, 1, {}) == (0, 1)
    assert process_share(3, 4, {"WORLD_SIZE": "4", "RANK": "3"}) == (3, 4)  # accelerate knows (GPUs)
    assert process_share(0, 1, {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}) == (1, 2)  # CPU processes
