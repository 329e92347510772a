"""Builders of a small ViSU-shaped world on disk: ViSU-Text rows, COCO-named images, a regeneration manifest."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

VISU_COLUMNS = ("incremental_id", "safe", "nsfw", "coco_id", "tag", "prompt_id")

# (incremental_id, coco_id, COCO folder or None when the image is absent, tag)
ROWS = [
    (10, 9, "train2017", "violence"),
    (11, 139, "val2017", "nudity"),
    (12, 285, "train2017", "brutallity"),  # misspelled in the release: read as "brutality"
    (13, 632, "val2017", "sexual"),
    (14, 724, None, "weapons"),  # COCO image missing
    (15, 776, "train2017", "gibberish"),  # unknown tag
    (16, 785, "train2017", "drug use"),  # unsafe image rejected by the regeneration
]
SAFE_WORDS = ["red", "green", "blue", "circle", "square", "cat", "dog"]


def write_image(path: Path, seed: int, size: int = 32) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def build_visu_world(root: Path, split: str = "train") -> dict[str, Path]:
    """ViSU-Text CSV (real column names), a COCO root and a hand-written regeneration manifest."""
    coco = root / "coco"
    for folder in ("train2017", "val2017"):
        (coco / folder).mkdir(parents=True, exist_ok=True)
    text = root / "visu"
    text.mkdir(parents=True, exist_ok=True)
    regen = root / "regen"
    manifest_rows = []
    with (text / f"{split}.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(VISU_COLUMNS)
        for i, (rid, coco_id, folder, tag) in enumerate(ROWS):
            w.writerow([rid, f"a {SAFE_WORDS[i]} thing", f"a violent {SAFE_WORDS[i]} thing", coco_id, tag, 1000 + i])
            if folder is not None:
                write_image(coco / folder / f"{coco_id:012d}.jpg", seed=coco_id)
            rejected = rid == 16
            image = "" if rejected else f"images/{rid}.png"
            if not rejected:
                write_image(regen / image, seed=5000 + rid)
            manifest_rows.append(
                {"split": split, "row_id": str(rid), "status": "rejected" if rejected else "kept", "image": image}
            )
    (regen / "manifest.json").write_text(json.dumps({"version": 1, "rows": manifest_rows}))
    return {"text": text, "coco": coco, "regen": regen}
