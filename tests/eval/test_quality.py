"""``eval quality`` end to end on the tiny SD pipeline: real COCO captions, a folder of real photos, FID with an
injected extractor, CLIP score with a tiny CLIP; resume after kill -9, shards, the report, bad arguments."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import linalg

from eval.quality.metrics import CLIPScorer, FIDSettings, prepare_image
from eval.quality.run import QualityConfig, load_captions, read_quality_csv, run_quality
from eval.store.results import ResultsStore
from tests.eval.builders import REPO, kill_after_items, shared_file, subprocess_env

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ColourStats(torch.nn.Module):
    """A small fixed feature extractor: per-channel mean and standard deviation (6-d). Counts what it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += len(x)
        x = x.float()
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


SETTINGS = FIDSettings(image_size=16, batch_size=4, extractor="colour-stats")


def colour_features(images) -> np.ndarray:
    out = []
    for im in images:
        x = prepare_image(im, 16).double()
        out.append(torch.cat([x.mean(dim=(1, 2)), x.std(dim=(1, 2))]).numpy())
    return np.array(out)


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * linalg.sqrtm(ca @ cb).real))


def coco_captions(path: Path, n: int) -> Path:
    """The first ``n`` rows of the real COCO-30k caption file, in its own layout."""
    source = shared_file("data", "coco_30k.csv")
    with source.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        rows = [next(reader) for _ in range(n + 1)]
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    return path


@pytest.fixture(scope="module")
def real_folder(tmp_path_factory, photos) -> Path:
    """Real photos of several sizes and aspect ratios (what a COCO folder looks like), as JPEG and PNG."""
    folder = tmp_path_factory.mktemp("real")
    for i, photo in enumerate(photos):
        photo.save(folder / f"{i}.jpg", quality=95)
        w, h = photo.size
        photo.crop((0, 0, w // 2, h)).save(folder / f"{i}_left.png")
        photo.resize((w // 3, h // 4)).save(folder / f"{i}_small.png")
    return folder


def config(out: Path, captions: Path, model: Path, real: Path, clip: Path, **kw) -> QualityConfig:
    base = dict(
        model=str(model),
        captions=str(captions),
        conditions=["sd"],
        out=out,
        real=real,
        clip_model=str(clip),
        fid_settings=SETTINGS,
        stats_cache=out.parent / "stats",
        steps=2,
        size=32,
        batch_size=2,
        metrics_batch_size=3,
        progress=False,
    )
    return QualityConfig(**{**base, **kw})


def test_quality_end_to_end(tmp_path, tiny_sd_dir, tiny_safe_file, real_folder, tiny_clip_score_dir):
    captions = coco_captions(tmp_path / "coco.csv", 4)
    out = tmp_path / "run"
    extractor = ColourStats()
    cfg = config(out, captions, tiny_sd_dir, real_folder, tiny_clip_score_dir, safe_checkpoint=str(tiny_safe_file))
    rows = run_quality(cfg, fid_extractor=extractor, shard=(0, 1))
    n_real = len(list(real_folder.iterdir()))
    assert extractor.seen == 1 + n_real + 4  # torchmetrics' width probe, the real folder, the 4 images

    with ResultsStore(out / "quality") as store:
        items = store.items("sd")
    # One image per caption, each with the caption's published seed; prompts are the captions themselves.
    assert [(it.prompt_id, it.seed) for it in items] == [
        ("coco:0", 41337),
        ("coco:1", 63155),
        ("coco:2", 78978),
        ("coco:3", 19959),
    ]
    assert items[0].prompt == "A bicycle replica with a clock as the front wheel."
    images = [Image.open(out / "quality" / it.path).convert("RGB") for it in items]
    real_images = [Image.open(p).convert("RGB") for p in sorted(real_folder.iterdir())]

    (row,) = rows
    assert (row.condition, row.n_images) == ("sd", 4)
    assert row.fid == pytest.approx(frechet(colour_features(real_images), colour_features(images)), rel=1e-5)
    clip = CLIPScorer(str(tiny_clip_score_dir)).score(images, [it.prompt for it in items])
    assert row.clip_score == pytest.approx(clip, abs=1e-4)
    (back,) = read_quality_csv(out / "quality.csv")
    assert (back.condition, back.n_images) == ("sd", 4)
    assert (back.fid, back.clip_score) == (pytest.approx(row.fid, abs=1e-6), pytest.approx(row.clip_score, abs=1e-6))
    md = (out / "quality.md").read_text()
    assert "| sd | 4 |" in md and "colour-stats" in md and "center-cropped" in md
    assert (out / "quality.tex").read_text().startswith(r"\begin{tabular}")

    # A second condition: the real statistics come from the cache and sd's metrics from the run's cache.
    extractor2 = ColourStats()
    cfg.conditions = ["sd", "sd+safe"]
    rows2 = run_quality(cfg, fid_extractor=extractor2, shard=(0, 1))
    assert extractor2.seen == 1 + 4  # the probe and sd+safe's images: no real image, no sd image again
    assert rows2[0] == row and rows2[1].condition == "sd+safe" and rows2[1].n_images == 4
    assert rows2[1].fid != row.fid
    assert len(list((tmp_path / "stats").iterdir())) == 1


def test_shards_then_the_main_process_measures(tmp_path, tiny_sd_dir, real_folder, tiny_clip_score_dir):
    captions = coco_captions(tmp_path / "coco.csv", 5)
    out = tmp_path / "run"
    cfg = config(out, captions, tiny_sd_dir, real_folder, tiny_clip_score_dir, clip_model=None, limit=4)
    assert run_quality(cfg, fid_extractor=ColourStats(), shard=(1, 2)) is None  # shard 0's images are missing
    assert not (out / "quality.csv").exists()
    rows = run_quality(cfg, fid_extractor=ColourStats(), shard=(0, 2))
    assert rows[0].n_images == 4 and np.isnan(rows[0].clip_score) and np.isfinite(rows[0].fid)
    with ResultsStore(out / "quality") as store:
        assert {it.extra["shard"] for it in store.items()} == {"0/2", "1/2"}


def test_killed_cli_run_resumes(tmp_path, tiny_sd_dir, tiny_clip_score_dir):
    captions = coco_captions(tmp_path / "coco.csv", 4)
    out = tmp_path / "run"
    args = [
        *("python", "-m", "eval", "quality", "--model", str(tiny_sd_dir), "--captions", str(captions)),
        *("--conditions", "sd", "--metrics", "clip", "--clip-model", str(tiny_clip_score_dir)),
        *("--steps", "2", "--size", "32", "--batch-size", "1", "--out", str(out), "--no-progress"),
    ]
    import sys

    args[0] = sys.executable
    kill_after_items(args, out / "quality" / "results.sqlite", 2)
    with ResultsStore(out / "quality") as store:
        before = {it.key: (out / "quality" / it.path).stat().st_mtime_ns for it in store.items()}
    assert 2 <= len(before) < 4 and not (out / "quality.csv").exists()
    done = subprocess.run(args, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| sd | 4 |" in done.stdout
    with ResultsStore(out / "quality") as store:
        items = store.items()
        assert len(items) == len({it.key for it in items}) == 4
        assert all((out / "quality" / it.path).stat().st_mtime_ns == before[it.key] for it in items if it.key in before)
    (row,) = read_quality_csv(out / "quality.csv")
    assert row.n_images == 4 and np.isnan(row.fid) and row.clip_score >= 0
    from tests.eval.builders import assert_digested, read_provenance

    assert_digested(read_provenance(out, "quality")[1], captions, tiny_sd_dir, tiny_clip_score_dir)


def test_report_shows_quality_beside_the_safety_table(tmp_path):
    from eval.quality.run import QualityRow, write_quality_report
    from eval.report.t2i import refresh_report_md, write_report

    out = tmp_path / "run"
    with ResultsStore(out) as store:
        for i in range(2):
            store.add("sd", f"i2p:{i}", i, Image.new("RGB", (8, 8)), prompt_set="i2p", prompt="p", categories=["hate"])
        store.set_labels("q16", [(("sd", f"i2p:{i}", i), i == 0, 0.5, {}) for i in range(2)])
        store.set_labels("nudenet", [(("sd", f"i2p:{i}", i), False, 0.0, {}) for i in range(2)])
        store.set_meta("runs", [{"config": {"rule": ["q16", "nudenet"], "reference": None}}])
        write_report(store, out, reference=None, chart=False)
    assert "Image quality" not in (out / "report.md").read_text()
    write_quality_report([QualityRow("sd", 2, 12.5, 30.25)], out)
    assert refresh_report_md(out) == out / "report.md"
    md = (out / "report.md").read_text()
    assert md.index("| sd | 50.0 |") < md.index("## Image quality") < md.index("| sd | 2 | 12.50 | 30.25 |")
    assert refresh_report_md(tmp_path / "elsewhere") is None


def test_captions_any_csv_with_a_caption_column(tmp_path):
    path = tmp_path / "caps.csv"
    path.write_text("image_id,caption,seed\n7,a dog on a couch,3\n9,two cats,4\n")
    caps = load_captions(path)
    assert [(p.text, p.seed) for p in caps] == [("a dog on a couch", 3), ("two cats", 4)]
    other = tmp_path / "other.csv"
    other.write_text("id,sentence\n1,a boat\n")
    assert [p.text for p in load_captions(other, caption_column="sentence")] == ["a boat"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--metrics", "fid,lpips"], "choose among fid, clip"),
        (["--metrics", "fid"], "FID needs --real"),
        (["--real", "{tmp}/missing"], "not a folder of images"),
        (["--conditions", "sd,bogus", "--metrics", "clip"], "unknown condition"),
        (["--metrics", "clip", "--caption-column", "nope"], "'nope' is missing"),
        (["--metrics", "fid", "--real", "{tmp}"], "needs torch-fidelity|at least 2 images"),
    ],
)
def test_bad_arguments_are_clear_errors(tmp_path, capsys, extra, message):
    from eval.__main__ import main

    captions = tmp_path / "c.csv"
    captions.write_text("prompt\na\nb\n")
    argv = ["quality", "--model", "m", "--captions", str(captions), "--out", str(tmp_path / "o")]
    assert main(argv + [e.format(tmp=tmp_path) for e in extra]) == 2
    import re

    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize("extra", [["--limit", "0"], ["--steps", "-1"], ["--guidance", "nan"], ["--fid-size", "x"]])
def test_bad_numbers_are_refused_by_the_parser(tmp_path, extra):
    from eval.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["quality", "--model", "m", "--captions", "c.csv", "--out", str(tmp_path), *extra])
    assert exc.value.code == 2
