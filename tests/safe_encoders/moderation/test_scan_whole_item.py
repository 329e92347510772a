"""`scan` judges what a viewer would see: every frame / page, alpha on white and on black, 16-bit gray, EXIF
orientation, a long text window by window; thresholds outside the model's range are refused."""

import math

import numpy as np
import pytest

from safe_encoders.cli import main
from safe_encoders.moderation import InputSpec, ScanConfig, ScanError, read_scan, scan
from tests.safe_encoders.moderation.scan_data import TEXTS

pytestmark = [pytest.mark.usefixtures("one_torch_thread")]
pytest.importorskip("pyarrow")
Image = pytest.importorskip("PIL.Image")


def image_scores(model, arrays) -> list[float]:
    """Root distances of uint8 RGB arrays through `unsafe_score` (the in-memory path, no file involved)."""
    images = [Image.fromarray(array, "RGB") for array in arrays]
    return model.unsafe_score(images=images, image_threshold=0.0).image.scores.tolist()


def text_scores(model, texts) -> list[float]:
    return model.unsafe_score(texts=list(texts), text_threshold=0.0).text.scores.tolist()


def few_colour_picture(seed: int, size=(36, 44)) -> np.ndarray:
    """Random pixels from 16 colours: a GIF palette holds them exactly, so every format stores them losslessly."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    return palette[rng.integers(0, 16, size)]


def scan_one_image(model, tmp_path, path, threshold):
    out = tmp_path / "out"
    scan(model, InputSpec(str(path.parent)), out, ScanConfig(thresholds={"image": threshold}, progress=False))
    (row,) = read_scan(out).to_pylist()
    return row


@pytest.mark.parametrize("suffix", [".gif", ".png", ".tiff"])  # animated GIF, APNG, multi-page TIFF
def test_every_frame_is_scored_and_the_highest_names_its_frame(model, tmp_path, suffix):
    pictures = [few_colour_picture(1), few_colour_picture(2)]
    scores = image_scores(model, pictures)
    low, high = np.argsort(scores)  # the unsafe picture is the second frame
    frames = [Image.fromarray(pictures[low], "RGB"), Image.fromarray(pictures[high], "RGB")]
    (tmp_path / "photos").mkdir()
    path = tmp_path / "photos" / f"anim{suffix}"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    row = scan_one_image(model, tmp_path, path, threshold=(scores[low] + scores[high]) / 2)
    assert row["error"] is None and row["view"] == "frame 2/2"
    assert row["score"] == pytest.approx(scores[high], abs=1e-5) and row["unsafe"] is True


def test_a_picture_in_the_alpha_channel_is_seen_on_white(model, tmp_path):
    """RGB all black, the picture in alpha: on black it is invisible, on white it shows (255 - alpha)."""
    black = np.zeros((36, 44, 3), np.uint8)
    for seed in range(20):
        alpha = np.random.default_rng(seed).integers(0, 256, (36, 44), dtype=np.uint8)
        on_white = np.repeat((255 - alpha)[..., None], 3, axis=2)
        score_white, score_black = image_scores(model, [on_white, black])
        if score_white > score_black + 1e-3:
            break
    else:
        pytest.fail("no picture scores above black on this tiny model")
    (tmp_path / "photos").mkdir()
    Image.fromarray(np.dstack([black, alpha]), "RGBA").save(tmp_path / "photos" / "hidden.png")
    row = scan_one_image(model, tmp_path, tmp_path / "photos" / "hidden.png", (score_white + score_black) / 2)
    assert row["score"] == pytest.approx(score_white, abs=1e-4) and row["view"] == "on white"
    assert row["unsafe"] is True


def test_sixteen_bit_gray_is_scaled_not_clipped(model, tmp_path):
    gray = np.random.default_rng(5).integers(0, 256, (36, 44), dtype=np.uint16)
    (tmp_path / "photos").mkdir()
    Image.fromarray(gray * 257).save(tmp_path / "photos" / "deep.png")  # a 16-bit grayscale PNG
    (expected,) = image_scores(model, [np.repeat(gray.astype(np.uint8)[..., None], 3, axis=2)])
    row = scan_one_image(model, tmp_path, tmp_path / "photos" / "deep.png", 0.6)
    assert row["error"] is None and row["score"] == pytest.approx(expected, abs=1e-4)


def test_exif_orientation_is_applied(model, tmp_path):
    upright = few_colour_picture(7, size=(30, 50))
    stored = np.ascontiguousarray(np.rot90(upright))  # what a camera writes with Orientation 6 (rotate 90 CW)
    expected, as_stored = image_scores(model, [upright, stored])
    assert abs(expected - as_stored) > 1e-4  # the test can tell the two apart
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "photos").mkdir()
    Image.fromarray(stored, "RGB").save(tmp_path / "photos" / "camera.png", exif=exif)
    row = scan_one_image(model, tmp_path, tmp_path / "photos" / "camera.png", 0.6)
    assert row["score"] == pytest.approx(expected, abs=1e-4)


def test_a_long_text_is_scored_window_by_window(model, tmp_path):
    """75 filler tokens fill the first window; the text after them is read in the second (as the gate does)."""
    filler = " ".join(["a"] * 80)
    tails = [" ".join(["a"] * 5) + " " + text for text in TEXTS]
    first, *tail_scores = text_scores(model, [" ".join(["a"] * 75), *tails])
    best = int(np.argmax(tail_scores))
    assert tail_scores[best] > first + 1e-3
    path = tmp_path / "long.jsonl"
    path.write_text(f'{{"text": "{filler} {TEXTS[best]}"}}\n')
    config = ScanConfig(thresholds={"text": (first + tail_scores[best]) / 2}, progress=False)
    scan(model, InputSpec(str(path)), tmp_path / "out", config)
    (row,) = read_scan(tmp_path / "out").to_pylist()
    assert row["view"] == "window 2/2" and row["score"] == pytest.approx(tail_scores[best], abs=1e-4)
    assert row["unsafe"] is True


@pytest.mark.parametrize("value", [math.nan, math.inf, -0.1, 1e6])
def test_thresholds_outside_the_model_range_are_refused(model, tmp_path, value):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a cat"}\n')
    with pytest.raises(ScanError, match="threshold"):
        scan(model, InputSpec(str(path)), tmp_path / "out", ScanConfig(thresholds={"text": value}, progress=False))
    assert not list((tmp_path / "out").glob("*.parquet"))


def test_cli_threshold_nan_is_refused_at_parse_time_and_the_library_refuses_it_too(model, tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a cat"}\n')
    for value in ("nan", "inf"):
        with pytest.raises(SystemExit) as exit_:
            main(["scan", str(path), "--out", str(tmp_path / "out"), "--threshold", value])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert "--threshold" in err and "finite" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ScanError, match="finite"):  # the library's own check, for callers of scan()
        scan(model, InputSpec(str(path)), tmp_path / "out", ScanConfig(thresholds={"text": math.nan}, progress=False))


def test_decoding_workers_give_the_rows_of_the_inline_scan(model, tmp_path):
    from tests.safe_encoders.moderation.scan_data import image_folder

    folder = image_folder(tmp_path / "photos", n=7)
    frames = [Image.fromarray(few_colour_picture(seed), "RGB") for seed in (3, 4)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    tables = []
    for workers in (0, 2):
        config = ScanConfig(batch_size=2, workers=workers, progress=False)
        scan(model, InputSpec(str(folder)), tmp_path / f"out{workers}", config)
        tables.append(read_scan(tmp_path / f"out{workers}").drop_columns(["score"]).to_pylist())
    assert tables[0] == tables[1] and len(tables[0]) == 9
    scores = [read_scan(tmp_path / f"out{w}").column("score").to_pylist() for w in (0, 2)]
    assert scores[1] == pytest.approx(scores[0], abs=1e-6, nan_ok=True)


def test_a_palette_image_with_a_transparent_index_is_composited(model, tmp_path):
    """Index 0 is transparent (its palette colour, green, is never shown); index 1 is red."""
    mask = np.random.default_rng(9).integers(0, 2, (36, 44)).astype(np.uint8)
    image = Image.fromarray(mask, "P")
    image.putpalette([0, 255, 0, 255, 0, 0] + [0] * 762)
    (tmp_path / "photos").mkdir()
    image.save(tmp_path / "photos" / "pal.png", transparency=0)
    red = np.array([255, 0, 0], np.uint8)
    on_white = np.where(mask[..., None] == 1, red, np.uint8(255))
    on_black = np.where(mask[..., None] == 1, red, np.uint8(0))
    expected = max(image_scores(model, [on_white.astype(np.uint8), on_black.astype(np.uint8)]))
    row = scan_one_image(model, tmp_path, tmp_path / "photos" / "pal.png", 0.6)
    assert row["score"] == pytest.approx(expected, abs=1e-4) and row["view"] in ("on white", "on black")
