"""Atomic writes: a crash or a concurrent reader sees the old file (folder) or the new one, never half of one.

One mechanism for every file the project writes (encoder files, reports, manifests, caches, images):
write to a temporary file in the same folder, flush it to disk, then rename it over the target. Folders
of several files (an exported model) are written whole the same way by :func:`atomic_folder`: into a
temporary sibling that is renamed into place once complete. Files get the mode a plain ``open()``
would give them (``0o666`` less the umask), not the ``0o600`` of a temporary file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from safetensors import SafetensorError

from .errors import SafeEncodersError


class FolderWriteError(SafeEncodersError, OSError):
    """A folder could not be written whole; nothing was left at its place (the old folder, if any, is kept)."""


def current_umask() -> int:
    """The process's umask, read without changing it where the OS tells it (Linux), else set and restored."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename inside it) to disk; a no-op where folders cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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
            os.fchmod(handle.fileno(), 0o666 & ~current_umask())  # mkstemp makes 0600 files
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


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(folder)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Write a folder whole: ``with atomic_folder(out) as tmp:`` fill ``tmp``, a temporary sibling of ``out``.

    On success the files are flushed and ``tmp`` replaces ``out``. An existing ``out`` (a previous export)
    is moved aside and deleted once the new folder is in place; one holding files the new folder does not
    (not ours to delete) is refused. On any failure ``tmp`` is deleted, ``out`` is left as it
    was, and the error is re-raised (an I/O error as :class:`FolderWriteError`, naming the folder).
    Leftover temporaries of killed writers (``.NAME.*.partial``) are removed on the next write.
    """
    final = Path(path)
    if final.exists() and not final.is_dir():
        raise FolderWriteError(f"{final} exists and is not a folder; choose another output folder")
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.*.partial"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700 folders
    try:
        yield tmp
        _fsync_tree(tmp)
        old = None
        if final.exists():
            foreign = sorted({p.name for p in final.iterdir()} - {p.name for p in tmp.iterdir()})
            if foreign:  # never delete what this writer did not write
                raise FolderWriteError(
                    f"{final} already holds other files ({', '.join(foreign[:5])}); nothing was written, "
                    "choose a new or empty folder"
                )
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
            os.replace(final, old / final.name)
        try:
            os.replace(tmp, final)
        except BaseException:
            if old is not None:  # put the old folder back
                os.replace(old / final.name, final)
            raise
        fsync_dir(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except (OSError, SafetensorError) as error:  # a full disk, a file-size limit, a read-only folder...
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, SafeEncodersError):
            raise
        reason = getattr(error, "strerror", None) or str(error)
        raise FolderWriteError(
            f"could not write {final} ({reason}); nothing was written there, "
            "free some space or choose another folder and run again"
        ) from error
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
