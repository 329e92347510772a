import csv
import json
import math
from pathlib import Path

import pytest
import torch

from eval.data.synthetic import build_image_processor, build_tokenizer
from eval.data.visu import VisuDataError, VisuSource, coco_file_name, read_visu
from eval.errors import PromptSetError
from tests.train.visu_builders import ROWS, build_visu_world
from train.config import load_config
from train.data import IndexedQuadruplets, QuadrupletCollator
from train.loop import run_training
from train.model import SafeClipModel
from train.tiny_clip import tiny_clip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _train_source(paths, **kw) -> VisuSource:
    """The ViSU source over the train split of the world `build_visu_world` laid out at ``paths``."""
    return VisuSource(paths["text"], split="train", coco_root=paths["coco"], unsafe_images=paths["regen"], **kw)


def test_coco_names_and_tag_reading(tmp_path):
    assert coco_file_name(139) == "000000000139.jpg"
    paths = build_visu_world(tmp_path)
    rows = read_visu(paths["text"], split="train")
    assert [r.row_id for r in rows] == [str(r[0]) for r in ROWS]
    by_id = {r.row_id: r for r in rows}
    assert by_id["12"].concept == "brutality" and by_id["12"].category == "violence"
    assert by_id["11"].category == "sexual" and by_id["16"].category == "illegal activity"
    assert by_id["15"].concept is None and by_id["15"].category is None


def test_missing_rows_are_reported_and_skipped(tmp_path):
    paths = build_visu_world(tmp_path)
    report_path = tmp_path / "out" / "visu-train-report.json"
    source = _train_source(paths, on_missing="skip", report_path=report_path)
    # rows 14 (no COCO image) and 16 (rejected unsafe image) are out; the unknown tag row stays, tag None
    assert [r.row_id for r in source.rows] == ["10", "11", "12", "13", "15"]
    assert len(source) == 5
    quad = source[2]
    assert quad.safe_text == "a blue thing" and quad.unsafe_text == "a violent blue thing"
    assert quad.tag == "violence" and quad.safe_image.size == (32, 32) and quad.safe_image.mode == "RGB"
    assert source[4].tag is None
    safe, unsafe = source.image_paths(1)
    assert safe.parent.name == "val2017" and safe.name == "000000000139.jpg" and unsafe.name == "11.png"

    report = json.loads(report_path.read_text())
    assert report["total_rows"] == 7 and report["usable_rows"] == 5 and report["missing_count"] == 2
    missing = {m["row_id"]: m for m in report["missing"]}
    assert set(missing) == {"14", "16"}
    assert missing["14"]["reasons"] == ["COCO image 000000000724.jpg not found"] and missing["14"]["coco_id"] == 724
    assert missing["16"]["reasons"] == ["unsafe image rejected in the regeneration"]
    assert report["unknown_tags"] == {"gibberish": 1}
    assert report["tags_read_as"] == {"brutallity": "brutality"}
    assert not list(report_path.parent.glob(".*.tmp"))  # atomic write leaves no temporary file


def test_on_missing_fail_raises_after_writing_the_report(tmp_path):
    paths = build_visu_world(tmp_path)
    report_path = tmp_path / "report.json"
    with pytest.raises(VisuDataError, match=r"2 of 7 rows lack an image.*on_missing='skip'"):
        _train_source(paths, on_missing="fail", report_path=report_path)
    assert json.loads(report_path.read_text())["missing_count"] == 2
    with pytest.raises(ValueError, match="on_missing must be one of"):
        _train_source(paths, on_missing="drop")
    with pytest.raises(VisuDataError, match="no regeneration manifest"):
        VisuSource(paths["text"], split="train", coco_root=paths["coco"], unsafe_images=tmp_path)


def test_visu_source_drives_one_trainer_step(tmp_path):
    paths = build_visu_world(tmp_path)
    source = _train_source(paths, report_path=tmp_path / "report.json")
    tokenizer = build_tokenizer(max_length=32)
    collator = QuadrupletCollator(tokenizer, build_image_processor(32))
    batch = collator([IndexedQuadruplets(source)[i] for i in range(len(source))])
    assert batch["safe_pixel_values"].shape == (5, 3, 32, 32) and batch["tags"][4] is None
    cfg = load_config(
        None,
        [
            f"output_dir={tmp_path / 'run'}",
            "data.batch_size=5",
            "optim.epochs=1",
            "progress=false",
            "tensorboard=false",
            "lora.rank=2",
            "lora.alpha=2",
        ],
    )
    torch.manual_seed(0)
    text, vision = tiny_clip(tokenizer, 32, width=32, layers=1, projection_dim=32)
    model = SafeClipModel(text, vision, cfg.lora)
    before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    result = run_training(cfg, model, IndexedQuadruplets(source), None, collator)
    assert result.global_step == 1
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert math.isfinite(log[0]["loss"]) and log[0]["step"] == 1
    after = model.trainable_state_dict()
    assert any(not torch.equal(before[k], after[k].cpu()) for k in before)  # the step changed the LoRA factors


def _rows_view(rows):
    return [(r.row_id, r.safe_text, r.unsafe_text, r.coco_id, r.tag, r.concept, r.seed, r.seeds) for r in rows]


def _visu_table(path):
    """The builder's CSV as a pyarrow table with the release's column types, plus a list-valued ``seeds`` column."""
    pa = pytest.importorskip("pyarrow", reason="Parquet needs the eval extra's `datasets` (pyarrow)")
    with path.open(newline="") as fh:
        records = list(csv.DictReader(fh))
    return pa.table(
        {
            "incremental_id": [int(r["incremental_id"]) for r in records],
            "safe": [r["safe"] for r in records],
            "nsfw": [r["nsfw"] for r in records],
            "coco_id": [int(r["coco_id"]) for r in records],
            "tag": [r["tag"] for r in records],
            "prompt_id": [int(r["prompt_id"]) for r in records],
            "seeds": [[7 * i, 7 * i + 1, 7 * i + 2] for i in range(len(records))],
        }
    )


def test_parquet_split_reads_like_csv(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="Parquet needs the eval extra's `datasets` (pyarrow)")
    paths = build_visu_world(tmp_path)
    folder = tmp_path / "parquet"
    folder.mkdir()
    pq.write_table(_visu_table(paths["text"] / "train.csv"), folder / "train.parquet")
    from_csv, from_parquet = read_visu(paths["text"], split="train"), read_visu(folder, split="train")
    assert [v[:-1] for v in _rows_view(from_parquet)] == [v[:-1] for v in _rows_view(from_csv)]
    assert [r.seeds for r in from_parquet] == [(7 * i, 7 * i + 1, 7 * i + 2) for i in range(len(ROWS))]
    # and a Parquet split drives the source just as the CSV does
    source = VisuSource(folder, split="train", coco_root=paths["coco"], unsafe_images=paths["regen"])
    assert [r.row_id for r in source.rows] == ["10", "11", "12", "13", "15"]


def _visu_hub_cache(tmp_path, paths):
    """aimagelab/ViSU-Text in a Hub cache, in the layout `datasets` pushes: data/<split>-00000-of-00001.parquet."""
    pq = pytest.importorskip("pyarrow.parquet", reason="Parquet needs the eval extra's `datasets` (pyarrow)")
    pytest.importorskip("datasets", reason="reading Hub datasets needs the eval extra's `datasets`")
    from tests.tiny_models import write_hub_cache

    table = _visu_table(paths["text"] / "train.csv")
    files = {}
    for split, rows in (("train", table), ("validation", table.slice(0, 2)), ("test", table.slice(2, 3))):
        out = tmp_path / f"{split}.parquet"
        pq.write_table(rows, out)
        files[f"data/{split}-00000-of-00001.parquet"] = out
    files["README.md"] = b"---\nlicense: cc-by-nc-4.0\n---\n# ViSU-Text (test double)\n"
    cache = tmp_path / "hub"
    write_hub_cache(cache, "aimagelab/ViSU-Text", files, repo_type="dataset")
    return cache


def test_visu_from_the_hub_cache_offline(tmp_path):
    paths = build_visu_world(tmp_path)
    cache = _visu_hub_cache(tmp_path, paths)
    from_hub = read_visu(None, split="train", cache_dir=cache)
    from_csv = read_visu(paths["text"], split="train")
    assert [v[:-1] for v in _rows_view(from_hub)] == [v[:-1] for v in _rows_view(from_csv)]
    assert [r.row_id for r in read_visu(None, split="test", cache_dir=cache)] == ["12", "13", "14"]
    assert len(read_visu(None, split="validation", cache_dir=cache)) == 2
    source = VisuSource(None, split="train", coco_root=paths["coco"], unsafe_images=paths["regen"], cache_dir=cache)
    assert [r.row_id for r in source.rows] == ["10", "11", "12", "13", "15"]
    with pytest.raises(PromptSetError, match=r"aimagelab/ViSU-Text\[valid\].*split"):
        read_visu(None, split="valid", cache_dir=cache)


def test_visu_hub_path_as_a_user_runs_it(tmp_path):
    """A real process with HF_HUB_OFFLINE=1 and HF_HUB_CACHE only (no cache_dir argument): the user's set-up."""
    import os
    import subprocess
    import sys

    paths = build_visu_world(tmp_path)
    cache = _visu_hub_cache(tmp_path, paths)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(cache),
        "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    code = "from eval.data.visu import read_visu; print(','.join(r.row_id for r in read_visu(None, split='test')))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "12,13,14"


def test_visu_splits_list_coco_and_read_the_manifest_once(tmp_path, monkeypatch):
    import shutil

    import eval.data.visu as visu

    paths = build_visu_world(tmp_path)
    shutil.copy(paths["text"] / "train.csv", paths["text"] / "validation.csv")  # rows absent from the manifest
    calls = {"coco": 0, "manifest": 0}
    coco_init, read_manifest = visu.CocoIndex.__init__, visu.read_manifest

    def counting_coco_init(self, root):
        calls["coco"] += 1
        coco_init(self, root)

    def counting_read_manifest(path):
        calls["manifest"] += 1
        return read_manifest(path)

    monkeypatch.setattr(visu.CocoIndex, "__init__", counting_coco_init)
    monkeypatch.setattr(visu, "read_manifest", counting_read_manifest)
    sets = visu.visu_splits(
        paths["text"], coco_root=paths["coco"], unsafe_images=paths["regen"], report_dir=tmp_path / "reports"
    )
    assert calls == {"coco": 1, "manifest": 1}
    alone = _train_source(paths)  # paths still work, and give the same source
    assert [r.row_id for r in sets["train"].rows] == [r.row_id for r in alone.rows]
    assert sets["train"].report.to_dict() == alone.report.to_dict()
    assert len(sets["validation"]) == 0 and sets["validation"].report.total_rows == len(ROWS)
    assert (tmp_path / "reports" / "visu-validation-report.json").is_file()


@pytest.mark.parametrize("cell", ["nan", "NaN", "inf", "-inf", "1.5", "x", ""])
def test_a_coco_id_that_is_not_an_integer_is_no_coco_id(tmp_path, cell):
    paths = build_visu_world(tmp_path)
    csv_path = paths["text"] / "train.csv"
    with csv_path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    column = rows[0].index("coco_id")
    rows[1][column] = cell
    with csv_path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    first = read_visu(paths["text"], split="train")[0]
    assert first.coco_id is None
    missing = {m.row_id: m.reasons for m in _train_source(paths).report.missing}
    assert "no coco_id" in missing[first.row_id]
