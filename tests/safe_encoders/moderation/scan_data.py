"""Small collections written the way users keep them (image folders, tables, WebDataset tars, HF datasets)
and a tiny HySAC saved as a folder, for the scan / search tests."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np

from tests.safe_encoders.hysac.tiny_hysac import tiny_hysac
from tests.tiny_models import clip_tokenizer

TEXTS = ["a photo of a cat", "a red bicycle", "an empty street at night", "two dogs", "a bowl of soup", "rain"]


def saved_tiny_hysac(folder: Path, *, seed: int = 0, text_bound: float = 0.5, image_bound: float = 0.6) -> Path:
    """A tiny random HySAC with bounds, a real CLIP tokenizer and a 30 px image processor, saved as our export."""
    from transformers import CLIPImageProcessor

    from safe_encoders.hysac import HySACBounds

    model = tiny_hysac(seed, bounds=HySACBounds({"S": {"up_95": text_bound}, "V": {"up_95": image_bound}}))
    model.tokenizer = clip_tokenizer()
    model.image_processor = CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30})
    model.save_pretrained(folder)
    return folder


def png_bytes(seed: int, size: tuple[int, int] = (36, 44)) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def image_folder(root: Path, n: int = 5, *, corrupt: bool = True) -> Path:
    """`n` PNGs, every other one in a sub-folder, a text file to ignore, and (by default) a broken JPEG."""
    (root / "sub").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / ("sub" if i % 2 else "") / f"img{i}.png").write_bytes(png_bytes(i))
    (root / "notes.txt").write_text("not an image")
    if corrupt:
        (root / "sub" / "broken.jpg").write_bytes(png_bytes(99)[:40])  # a truncated file
    return root


def write_table(path: Path, rows: list[dict]) -> Path:
    """Rows as .parquet, .jsonl or .csv, by the file's suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        import csv

        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return path


def webdataset_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    """A WebDataset shard: members `<key>.<ext>`, the files of one sample next to each other."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, files in samples:
            for extension, data in files.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def expected_image_scores(model, blobs: list[bytes]):
    """Root distances of encoded image bytes through `unsafe_score` (the in-memory path), for comparison."""
    from PIL import Image

    images = [Image.open(io.BytesIO(blob)).convert("RGB") for blob in blobs]
    return model.unsafe_score(images=images, image_threshold=0.0).image.scores
