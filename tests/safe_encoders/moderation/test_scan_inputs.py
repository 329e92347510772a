"""`scan` loses nothing and doubles nothing: every JSONL line, bad UTF-8 rows, relative paths against the table's
folder, duplicate ids, symlinks and FIFOs in folders, one scan per output folder, damaged shards."""

import os
import threading
import time

import pytest

from safe_encoders.cli import main
from safe_encoders.moderation import (
    InputError,
    InputSpec,
    ScanConfig,
    ScanError,
    ScanOutput,
    read_items,
    read_scan,
    scan,
)
from safe_encoders.moderation.scan import score_items
from tests.safe_encoders.moderation.scan_data import (
    TEXTS,
    expected_image_scores,
    png_bytes,
    write_table,
)

pytestmark = [pytest.mark.usefixtures("one_torch_thread")]
pq = pytest.importorskip("pyarrow.parquet")


def rows_by_key(folder):
    return {(row["id"], row["modality"]): row for row in read_scan(folder).to_pylist()}


def test_jsonl_schema_comes_from_every_line(model, tmp_path):
    (tmp_path / "img.png").write_bytes(png_bytes(3))
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(
        b'{"text": "a cat"}\n{"image": "img.png"}\n{"caption": "not a field we read"}\n{"text": "caf\xe9 bad"}\n'
    )
    scan(model, InputSpec(str(path)), tmp_path / "out", ScanConfig(progress=False))
    rows = rows_by_key(tmp_path / "out")
    # a line that cannot be read might have held either: an error row for each
    assert set(rows) == {("0", "text"), ("1", "image"), ("2", "text"), ("3", "text"), ("3", "image")}
    assert rows[("0", "text")]["error"] is None and rows[("1", "image")]["error"] is None
    assert rows[("1", "image")]["score"] == pytest.approx(expected_image_scores(model, [png_bytes(3)])[0].item(), 1e-4)
    assert "no 'text' or 'image' field" in rows[("2", "text")]["error"] and rows[("2", "text")]["unsafe"] is None
    assert "not valid UTF-8" in rows[("3", "text")]["error"]


def test_csv_with_a_bad_byte_and_a_long_row_gives_error_rows(model, tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b'text\na cat\ncaf\xe9\n"two","dogs"\nrain\n')
    items = list(read_items(InputSpec(str(path))))
    assert [(item.id, item.text, item.error) for item in items] == [
        ("0", "a cat", None),
        ("1", None, "line 3: not valid UTF-8"),
        ("2", None, "line 4: more fields than the header (1 columns)"),
        ("3", "rain", None),
    ]


def test_a_relative_path_in_a_struct_resolves_against_the_tables_folder(model, tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "rel.png").write_bytes(png_bytes(40))
    (tmp_path / "rel.png").write_bytes(png_bytes(41))  # a decoy in the current directory
    monkeypatch.chdir(tmp_path)
    write_table(data / "t.parquet", [{"image": {"bytes": None, "path": "rel.png"}}])
    scan(model, InputSpec(str(data / "t.parquet")), tmp_path / "out", ScanConfig(progress=False))
    (row,) = read_scan(tmp_path / "out").to_pylist()
    assert row["score"] == pytest.approx(expected_image_scores(model, [png_bytes(40)])[0].item(), abs=1e-4)


def test_duplicate_ids_are_refused_up_front_or_deduped(model, tmp_path):
    keys = ["k0", "k1", "k0", "k2", "k1"]
    path = write_table(tmp_path / "t.jsonl", [{"key": key, "text": TEXTS[i]} for i, key in enumerate(keys)])
    spec = InputSpec(str(path), id_column="key")
    with pytest.raises(InputError, match=r"2 id\(s\) are not unique: 'k0' \(text\) at positions 0, 2; 'k1'.*--dedupe"):
        scan(model, spec, tmp_path / "out", ScanConfig(progress=False))
    assert not list((tmp_path / "out").glob("*.parquet"))
    summary = scan(model, spec, tmp_path / "out", ScanConfig(dedupe="first", progress=False))
    assert (summary.written, summary.duplicates_left_out) == (3, 2)
    table = read_scan(tmp_path / "out")
    assert table.column("id").to_pylist() == ["k0", "k1", "k2"]
    expected = model.unsafe_score(texts=[TEXTS[0], TEXTS[1], TEXTS[3]]).text.scores.tolist()
    assert table.column("score").to_pylist() == pytest.approx(expected, abs=1e-5)


def test_folder_follows_links_inside_records_loops_links_out_and_fifos(model, tmp_path):
    root, outside = tmp_path / "photos", tmp_path / "elsewhere"
    (root / "real").mkdir(parents=True)
    outside.mkdir()
    (root / "real" / "a.png").write_bytes(png_bytes(1))
    (outside / "b.png").write_bytes(png_bytes(2))
    (root / "linked").symlink_to(root / "real")  # a link inside the root: followed
    (root / "real" / "loop").symlink_to(root)  # a cycle
    (root / "out").symlink_to(outside)  # leaves the root
    (root / "gone.png").symlink_to(root / "missing.png")
    os.mkfifo(root / "x.png")
    items = {item.id: item for item in read_items(InputSpec(str(root)))}
    assert set(items) == {"gone.png", "x.png", "linked/a.png", "linked/loop", "out", "real/a.png", "real/loop"}
    assert items["linked/a.png"].error is None and items["real/a.png"].error is None
    assert "symbolic link loop" in items["real/loop"].error and "symbolic link loop" in items["linked/loop"].error
    assert "out of the scanned folder" in items["out"].error
    assert "not a regular file" in items["x.png"].error and "FileNotFoundError" in items["gone.png"].error


def test_a_fifo_named_in_a_table_is_recorded_never_opened(model, tmp_path):
    from safe_encoders.moderation import Item

    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)

    def unblock():  # if the scan opened the FIFO, it would block: release it after a while so the test fails
        time.sleep(3)
        with open(fifo, "wb"):
            pass

    threading.Thread(target=unblock, daemon=True).start()
    (row,) = score_items(model, [Item(0, "x", "image", image=str(fifo))], {"image": 0.6})
    assert "not a regular file" in row["error"] and row["unsafe"] is None


def test_a_second_scan_of_the_same_folder_is_refused_while_the_first_runs(model, tmp_path):
    path = write_table(tmp_path / "t.jsonl", [{"text": text} for text in TEXTS])
    out = ScanOutput(tmp_path / "out")
    running = ScanConfig(batch_size=2, progress=False)
    with out.lock(running):  # the first scan, holding the folder
        with pytest.raises(ScanError, match=r"another scan \(pid \d+, process 0-of-1, batch size 2.*use another --out"):
            scan(model, InputSpec(str(path)), out.folder, ScanConfig(batch_size=5, progress=False))
        split = ScanConfig(process_index=1, num_processes=2, progress=False)
        with pytest.raises(ScanError, match="another number of processes"):
            scan(model, InputSpec(str(path)), out.folder, split)
    assert not out.shards()
    assert scan(model, InputSpec(str(path)), out.folder, ScanConfig(progress=False)).written == len(TEXTS)


def test_two_concurrent_scans_with_other_settings_write_every_id_once(model, tmp_path):
    """Two scans started together on one folder with different batch sizes: one runs, the other is refused."""
    path = write_table(tmp_path / "t.jsonl", [{"text": f"{TEXTS[i % 6]} {i}"} for i in range(300)])
    start, outcomes = threading.Barrier(2), []

    def run(batch_size):
        start.wait()
        try:
            config = ScanConfig(batch_size=batch_size, shard_size=16, progress=False)
            outcomes.append(scan(model, InputSpec(str(path)), tmp_path / "out", config).written)
        except ScanError as error:
            outcomes.append(str(error))

    threads = [threading.Thread(target=run, args=(size,)) for size in (4, 8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    refused = [outcome for outcome in outcomes if isinstance(outcome, str)]
    assert len(outcomes) == 2 and all("another scan" in message for message in refused)
    assert sum(outcome for outcome in outcomes if isinstance(outcome, int)) == 300
    ids = read_scan(tmp_path / "out").column("id").to_pylist()
    assert sorted(ids, key=int) == [str(i) for i in range(300)]


def test_a_damaged_shard_is_one_line_naming_the_file(model_dir, tmp_path, capsys):
    path = write_table(tmp_path / "t.jsonl", [{"text": text} for text in TEXTS])
    argv = ["scan", str(path), "--out", str(tmp_path / "out"), "--model", str(model_dir), "--shard-size", "2",
            "--batch-size", "2", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    shard = sorted((tmp_path / "out").glob("part-*.parquet"))[1]
    shard.write_bytes(shard.read_bytes()[:100])
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and shard.name in err and "delete it" in err


def test_the_scan_folder_reads_as_one_table(model, tmp_path):
    from safe_encoders.moderation import build_index

    path = write_table(tmp_path / "t.jsonl", [{"text": text} for text in TEXTS])
    out = tmp_path / "out"
    scan(model, InputSpec(str(path)), out, ScanConfig(shard_size=4, embeddings=True, progress=False))
    build_index(out)  # leaves .search-index/ (its own Parquet file) in the folder
    assert pq.read_table(out).num_rows == len(TEXTS)
    pandas = pytest.importorskip("pandas")
    assert sorted(pandas.read_parquet(out).id) == sorted(str(i) for i in range(len(TEXTS)))
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset("parquet", data_dir=str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert loaded.num_rows == len(TEXTS)


def test_the_readme_keep_recipe_runs_on_a_scan(model, tmp_path, monkeypatch):
    from tests.safe_encoders.moderation.test_scan import ROOT

    readme = (ROOT / "README.md").read_text()
    block = next(b for b in readme.split("```python\n")[1:] if 'pq.read_table("scans/photos"' in b).split("```")[0]
    (tmp_path / "photos").mkdir()
    for i in range(4):
        (tmp_path / "photos" / f"{i}.png").write_bytes(png_bytes(60 + i))
    (tmp_path / "photos" / "broken.png").write_bytes(b"not a png")
    scores = expected_image_scores(model, [png_bytes(60 + i) for i in range(4)]).tolist()
    threshold = sorted(scores)[1] + 1e-4
    monkeypatch.chdir(tmp_path)
    scan(model, InputSpec("photos"), "scans/photos", ScanConfig(thresholds={"image": threshold}, progress=False))
    namespace: dict = {}
    exec(block, namespace)
    assert sorted(namespace["keep"]) == sorted(f"{i}.png" for i in range(4) if scores[i] <= threshold)


def test_a_damaged_input_table_is_one_line(model_dir, tmp_path, capsys):
    (tmp_path / "t.parquet").write_bytes(b"PAR1 not really parquet")
    assert main(["scan", str(tmp_path / "t.parquet"), "--out", str(tmp_path / "out"), "--model", str(model_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a readable Parquet file" in err
