import json
import math

import pytest
import torch

from tests.train.visu_builders import ROWS, build_visu_world
from train.config import load_config
from train.data import IndexedQuadruplets, QuadrupletCollator
from train.loop import train_safe_clip
from train.model import SafeClipModel
from train.synthetic import build_image_processor, build_tokenizer
from train.tiny_clip import tiny_clip
from train.visu import VisuDataError, VisuSource, coco_file_name, read_visu


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
    source = VisuSource(
        paths["text"],
        split="train",
        coco_root=paths["coco"],
        unsafe_images=paths["regen"],
        on_missing="skip",
        report_path=report_path,
    )
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
        VisuSource(
            paths["text"],
            split="train",
            coco_root=paths["coco"],
            unsafe_images=paths["regen"],
            on_missing="fail",
            report_path=report_path,
        )
    assert json.loads(report_path.read_text())["missing_count"] == 2
    with pytest.raises(ValueError, match="on_missing must be one of"):
        VisuSource(
            paths["text"], split="train", coco_root=paths["coco"], unsafe_images=paths["regen"], on_missing="drop"
        )
    with pytest.raises(VisuDataError, match="no regeneration manifest"):
        VisuSource(paths["text"], split="train", coco_root=paths["coco"], unsafe_images=tmp_path)


def test_visu_source_drives_one_trainer_step(tmp_path):
    paths = build_visu_world(tmp_path)
    source = VisuSource(
        paths["text"],
        split="train",
        coco_root=paths["coco"],
        unsafe_images=paths["regen"],
        report_path=tmp_path / "report.json",
    )
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
    result = train_safe_clip(cfg, model, IndexedQuadruplets(source), None, collator)
    assert result.global_step == 1
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert math.isfinite(log[0]["loss"]) and log[0]["step"] == 1
    after = model.trainable_state_dict()
    assert any(not torch.equal(before[k], after[k].cpu()) for k in before)  # the step changed the LoRA factors
