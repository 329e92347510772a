"""What a viewer would see of one image: every frame / page, alpha shown on white and on black, 16-bit and
palette modes brought to 8-bit RGB correctly, EXIF orientation applied.

A scan scores every view of an item and keeps the highest score (fail closed: content hidden in a later
frame of a GIF, or in the alpha channel of a PNG, is not missed). An ordinary opaque still image has one
view, so scanning it costs what it did before.
"""

from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Above this many frames an item is recorded as an error rather than half-read (an animation is judged
# whole or not at all); `ScanConfig.max_frames` changes it.
MAX_FRAMES = 1000
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0)}


@dataclass(frozen=True)
class View:
    """One picture to score: `label` names it in the scan's `view` column (None for an item's only view)."""

    label: str | None
    image: Any  # PIL.Image.Image in mode RGB


class NotARegularFile(OSError):
    """A path names a FIFO, a device or a socket: recorded, never opened (opening a FIFO blocks)."""


def open_image(value: Any, root: str | os.PathLike | None = None) -> Any:
    """The PIL image of a path, bytes, a `{"bytes", "path"}` dict or a PIL image (not decoded yet)."""
    from PIL import Image

    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, bytes | bytearray):
        return Image.open(io.BytesIO(value))
    if isinstance(value, str | os.PathLike):
        path = Path(value)
        if not path.is_absolute() and root is not None:
            path = Path(root) / path
        mode = os.stat(path).st_mode  # follows links; FileNotFoundError is the item's error
        if not stat.S_ISREG(mode):
            raise NotARegularFile(f"{path} is not a regular file (a FIFO, device or socket): not opened")
        return Image.open(path)
    raise ValueError(f"no image (got {type(value).__name__})")


def image_views(value: Any, *, root: str | os.PathLike | None = None, max_frames: int = MAX_FRAMES) -> list[View]:
    """Every view of an image: each frame (fully decoded: a truncated file fails here), on white and on black
    when it has transparency."""
    from PIL import ImageOps

    image = open_image(value, root)
    count = int(getattr(image, "n_frames", 1) or 1)
    if count > max_frames:
        raise ValueError(f"{count} frames, more than max_frames={max_frames} (raise it to judge this item)")
    views = []
    for index in range(count):
        if count > 1:
            image.seek(index)
        image.load()
        frame = ImageOps.exif_transpose(image)  # a copy, upright as a viewer shows it
        name = f"frame {index + 1}/{count}" if count > 1 else None
        for background, rgb in to_rgb(frame):
            label = ", ".join(part for part in (name, background) if part) or None
            views.append(View(label, rgb))
    return views


def to_rgb(frame: Any) -> list[tuple[str | None, Any]]:
    """8-bit RGB renderings of one frame: one if it is opaque, else `(on white, on black)`."""
    from PIL import Image

    frame = _eight_bit(frame)
    has_alpha = frame.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in frame.info
    if not has_alpha:
        return [(None, frame.convert("RGB"))]
    rgba = frame.convert("RGBA")
    if rgba.getchannel("A").getextrema() == (255, 255):
        return [(None, rgba.convert("RGB"))]
    return [
        (f"on {name}", Image.alpha_composite(Image.new("RGBA", rgba.size, (*color, 255)), rgba).convert("RGB"))
        for name, color in BACKGROUNDS.items()
    ]


def _eight_bit(frame: Any) -> Any:
    """Integer (16 / 32-bit) and float modes scaled to 8-bit L; `convert("RGB")` would clip them at 255."""
    from PIL import Image

    if not (frame.mode.startswith("I") or frame.mode == "F"):
        return frame
    values = np.asarray(frame).astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"non-finite pixel values in a {frame.mode} image")
    if frame.mode == "F":
        scale = 255.0 if values.max(initial=0) <= 1.0 else 1.0  # [0, 1] floats, else already 0..255
    else:
        scale = 1 / 257 if frame.mode.startswith("I;16") or values.max(initial=0) > 255 else 1.0
    return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8), "L")
