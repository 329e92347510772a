"""`scan`: every input kind on a tiny random HySAC, corrupt items, resumption after kill -9, process shards."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from safe_encoders.hysac import HySAC
from safe_encoders.moderation.collection import InputError, InputSpec, read_items
from safe_encoders.moderation.scan import ScanConfig, ScanError, read_scan, scan
from tests.safe_encoders.moderation.scan_data import (
    TEXTS,
    expected_image_scores,
    image_folder,
    png_bytes,
    webdataset_tar,
    write_table,
)

pytestmark = [pytest.mark.usefixtures("one_torch_thread")]
pytest.importorskip("pyarrow")

ROOT = Path(__file__).resolve().parents[3]


def rows_by_key(table):
    return {(row["id"], row["modality"]): row for row in table.to_pylist()}


def test_folder_scan_scores_every_image_once_and_records_the_corrupt_one(model, tmp_path):
    folder = image_folder(tmp_path / "photos", n=5)
    expected = expected_image_scores(model, [png_bytes(i) for i in range(5)])
    threshold = expected.median().item()
    config = ScanConfig(thresholds={"image": threshold}, batch_size=2, shard_size=3, embeddings=True, progress=False)
    summary = scan(model, InputSpec(str(folder)), tmp_path / "out", config)
    table = read_scan(tmp_path / "out")
    assert table.column("id").to_pylist() == ["img0.png", "img2.png", "img4.png", "sub/broken.jpg", "sub/img1.png",
                                              "sub/img3.png"]  # fmt: skip
    rows = rows_by_key(table)
    for i in range(5):
        row = rows[(f"{'sub/' if i % 2 else ''}img{i}.png", "image")]
        assert row["error"] is None and row["score"] == pytest.approx(expected[i].item(), abs=1e-5)
        assert row["unsafe"] == (expected[i].item() > threshold) and row["threshold"] == pytest.approx(threshold)
        assert len(row["embedding"]) == model.embed_dim
    broken = rows[("sub/broken.jpg", "image")]
    assert broken["error"].startswith("unreadable image") and broken["score"] is None and broken["unsafe"] is None
    assert (summary.written, summary.errors, summary.unsafe) == (6, 1, 2)
    assert len(list((tmp_path / "out").glob("part-*.parquet"))) == 2  # shards of 3 rows (batches of 2, flushed at >= 3)


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".csv"])
def test_table_of_texts_and_image_paths(model, tmp_path, suffix):
    (tmp_path / "img").mkdir()
    for i in range(3):
        (tmp_path / "img" / f"{i}.png").write_bytes(png_bytes(10 + i))
    rows = [{"key": f"k{i}", "caption": TEXTS[i], "path": f"img/{i}.png"} for i in range(3)]
    rows.append({"key": "k3", "caption": TEXTS[3], "path": "img/missing.png"})
    table_path = write_table(tmp_path / f"data{suffix}", rows)
    spec = InputSpec(str(table_path), id_column="key", text_column="caption", image_column="path")
    scan(model, spec, tmp_path / "out", ScanConfig(batch_size=3, progress=False))
    got = rows_by_key(read_scan(tmp_path / "out"))
    assert len(got) == 8
    texts = model.unsafe_score(texts=TEXTS[:4])
    images = expected_image_scores(model, [png_bytes(10 + i) for i in range(3)])
    for i in range(4):
        text = got[(f"k{i}", "text")]
        assert text["score"] == pytest.approx(texts.text.scores[i].item(), abs=1e-5)
        assert text["unsafe"] == (text["score"] > 0.5)  # the model's S.up_95
    for i in range(3):
        image = got[(f"k{i}", "image")]
        assert image["score"] == pytest.approx(images[i].item(), abs=1e-5) and image["threshold"] == pytest.approx(0.6)
    assert "FileNotFoundError" in got[("k3", "image")]["error"] and got[("k3", "image")]["unsafe"] is None


def test_jsonl_malformed_line_is_recorded_and_columns_are_guessed(model, tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"text": "a cat"}\n{"text": broken\n\n{"text": 7}\n{"text": "a dog"}\n')
    items = list(read_items(InputSpec(str(path))))
    assert [(item.id, item.text, item.error is None) for item in items] == [
        ("0", "a cat", True), ("1", None, False), ("2", 7, False), ("3", "a dog", True)
    ]  # fmt: skip
    assert items[1].error.startswith("malformed JSON line") and "no text" in items[2].error
    with pytest.raises(InputError, match=r"no column 'caption'; columns: \['text'\]"):
        list(read_items(InputSpec(str(path), text_column="caption")))


def test_webdataset_shards(model, tmp_path):
    shards = tmp_path / "shards"
    webdataset_tar(shards / "00000.tar", [
        ("s0", {"jpg": png_bytes(20), "txt": b"a photo of a cat", "json": b"{}"}),
        ("s1", {"png": png_bytes(21), "txt": b"two dogs"}),
        ("s2", {"jpg": b"\xff\xd8 not really", "txt": b"rain"}),
    ])  # fmt: skip
    webdataset_tar(shards / "00001.tar", [("s3", {"txt": b"a red bicycle"})])
    spec = InputSpec(str(shards), kind="webdataset", text_column="txt", image_column="jpg;png")
    items = list(read_items(spec))
    assert [(item.id, item.modality) for item in items] == [
        ("00000.tar/s0", "text"), ("00000.tar/s0", "image"), ("00000.tar/s1", "text"), ("00000.tar/s1", "image"),
        ("00000.tar/s2", "text"), ("00000.tar/s2", "image"), ("00001.tar/s3", "text"), ("00001.tar/s3", "image"),
    ]  # fmt: skip
    assert {item.modality for item in read_items(InputSpec(str(shards), text_column="txt", kind="webdataset"))} == {
        "text"
    }
    scan(model, spec, tmp_path / "out", ScanConfig(batch_size=4, progress=False))
    got = rows_by_key(read_scan(tmp_path / "out"))
    images = expected_image_scores(model, [png_bytes(20), png_bytes(21)])
    assert got[("00000.tar/s0", "image")]["score"] == pytest.approx(images[0].item(), abs=1e-5)
    assert got[("00000.tar/s1", "image")]["score"] == pytest.approx(images[1].item(), abs=1e-5)
    texts = model.unsafe_score(texts=["a photo of a cat", "two dogs", "rain", "a red bicycle"]).text.scores
    for key, score in zip(["s0", "s1", "s2"], texts, strict=False):
        assert got[(f"00000.tar/{key}", "text")]["score"] == pytest.approx(score.item(), abs=1e-5)
    assert got[("00000.tar/s2", "image")]["error"].startswith("unreadable image")
    assert got[("00001.tar/s3", "image")]["error"] == "no image member"


def test_truncated_tar_keeps_the_samples_before_the_break(tmp_path):
    tar = webdataset_tar(tmp_path / "a.tar", [(f"s{i}", {"png": png_bytes(i)}) for i in range(3)])
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2 + 100])
    items = list(read_items(InputSpec(str(tar))))
    assert [item.id for item in items][:-1] == [f"a.tar/s{i}" for i in range(len(items) - 1)]
    assert items[-1].id == "a.tar#rest" and items[-1].error.startswith("unreadable tar")


@pytest.mark.parametrize("streaming", [False, True])
def test_hugging_face_dataset_saved_to_disk(model, tmp_path, streaming):
    datasets = pytest.importorskip("datasets")
    (tmp_path / "img").mkdir()
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / "img" / f"{i}.png"))
        Path(paths[-1]).write_bytes(png_bytes(30 + i) if i != 1 else b"broken")
    dataset = datasets.Dataset.from_dict({"image": paths, "text": TEXTS[:3]}).cast_column("image", datasets.Image())
    dataset.save_to_disk(tmp_path / "ds")
    spec = InputSpec(str(tmp_path / "ds"), streaming=streaming)
    scan(model, spec, tmp_path / "out", ScanConfig(progress=False))
    got = rows_by_key(read_scan(tmp_path / "out"))
    images = expected_image_scores(model, [png_bytes(30), png_bytes(32)])
    assert got[("0", "image")]["score"] == pytest.approx(images[0].item(), abs=1e-5)
    assert got[("2", "image")]["score"] == pytest.approx(images[1].item(), abs=1e-5)
    assert got[("1", "image")]["error"].startswith("unreadable image")
    texts = model.unsafe_score(texts=TEXTS[:3]).text.scores
    assert [got[(str(i), "text")]["score"] for i in range(3)] == pytest.approx(texts.tolist(), abs=1e-5)


def test_processes_split_the_input_and_together_write_each_item_once(model, tmp_path):
    path = write_table(tmp_path / "t.jsonl", [{"text": text} for text in TEXTS * 2])
    spec = InputSpec(str(path))
    single = scan(model, spec, tmp_path / "single", ScanConfig(batch_size=4, progress=False))
    for rank in (1, 0):  # one shared folder, as under `accelerate launch --num_processes 2`
        config = ScanConfig(batch_size=4, shard_size=2, process_index=rank, num_processes=2, progress=False)
        summary = scan(model, spec, tmp_path / "split", config)
        assert summary.written == 6
    split, whole = read_scan(tmp_path / "split"), read_scan(tmp_path / "single")
    assert split.column("position").to_pylist() == list(range(12)) and single.written == 12
    assert split.column("score").to_pylist() == pytest.approx(whole.column("score").to_pylist(), abs=1e-5)


def test_resume_refuses_another_configuration_and_half_precision_is_close(model, model_dir, tmp_path):
    path = write_table(tmp_path / "t.jsonl", [{"text": text} for text in TEXTS])
    scan(model, InputSpec(str(path)), tmp_path / "out", ScanConfig(progress=False))
    with pytest.raises(ScanError, match=r"holds a different scan \(thresholds: .*'text': 0\.5.*-> .*'text': 2\.0"):
        scan(model, InputSpec(str(path)), tmp_path / "out", ScanConfig(thresholds={"text": 2.0}, progress=False))
    again = scan(model, InputSpec(str(path)), tmp_path / "out", ScanConfig(progress=False))
    assert (again.written, again.skipped_done) == (0, 6)
    from safe_encoders.moderation.scan import prepare_model

    bf16 = prepare_model(HySAC.from_pretrained(model_dir), dtype="bf16")
    scan(bf16, InputSpec(str(path)), tmp_path / "bf16", ScanConfig(dtype="bf16", progress=False))
    assert read_scan(tmp_path / "bf16").column("score").to_pylist() == pytest.approx(
        read_scan(tmp_path / "out").column("score").to_pylist(), abs=0.05
    )


def test_kill_9_mid_scan_then_resume_writes_every_id_exactly_once(model, model_dir, tmp_path):
    texts = [f"{TEXTS[i % len(TEXTS)]} number {i}" for i in range(1500)]
    path = write_table(tmp_path / "many.jsonl", [{"text": text} for text in texts])
    out = tmp_path / "out"
    command = [sys.executable, "-m", "safe_encoders", "scan", str(path), "--out", str(out), "--model", str(model_dir),
               "--batch-size", "4", "--shard-size", "8", "--no-progress"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while len(list(out.glob("part-*.parquet"))) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, f"the scan ended before it could be killed: {process.stderr.read().decode()[-2000:]}"
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = read_scan(out).num_rows
    assert 0 < done_before < len(texts)
    spec = InputSpec(str(path))
    summary = scan(model, spec, out, ScanConfig(batch_size=64, shard_size=8, model_name=str(model_dir), progress=False))
    assert summary.skipped_done == done_before and summary.written == len(texts) - done_before
    table = read_scan(out)
    assert table.column("position").to_pylist() == list(range(len(texts)))
    assert sorted(table.column("id").to_pylist(), key=int) == [str(i) for i in range(len(texts))]
    expected = model.unsafe_score(texts=texts, batch_size=256).text.scores
    assert table.column("score").to_pylist() == pytest.approx(expected.tolist(), abs=1e-5)


@pytest.mark.parametrize("streaming", [False, True])
def test_hugging_face_load_dataset_on_local_files(model, tmp_path, streaming):
    """`--kind hf` on a folder that is not a saved dataset goes through `datasets.load_dataset` (imagefolder)."""
    pytest.importorskip("datasets")
    folder = image_folder(tmp_path / "photos", n=4)
    scan(model, InputSpec(str(folder), kind="hf", streaming=streaming), tmp_path / "out", ScanConfig(progress=False))
    rows = read_scan(tmp_path / "out").to_pylist()
    assert [row["id"] for row in rows] == ["0", "1", "2", "3", "4"] and {row["modality"] for row in rows} == {"image"}
    errors = [row for row in rows if row["error"] is not None]
    assert len(errors) == 1 and errors[0]["error"].startswith("unreadable image")
    expected = expected_image_scores(model, [png_bytes(i) for i in range(4)])
    got = sorted(row["score"] for row in rows if row["error"] is None)
    assert got == pytest.approx(sorted(expected.tolist()), abs=1e-5)
