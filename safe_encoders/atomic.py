"""Atomic file writes: a crash or a concurrent reader sees the old file or the new one, never half of one.

One mechanism for every file the project writes (encoder files, reports, manifests, caches, images):
write to a temporary file in the same folder, flush it to disk, then rename it over the target.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` to fill a temporary file beside `path`, then move it onto `path`.

    For writers that want a file name (e.g. `safetensors.torch.save_file`). The folder is created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_stream(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Like `atomic_write`, for writers that take an open binary file (e.g. `PIL.Image.save`)."""

    def fill(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            write(handle)

    return atomic_write(path, fill)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write_stream(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` as UTF-8, newlines untranslated."""
    return atomic_write_bytes(path, text.encode("utf-8"))
