"""Where a live weight's original bytes can be read again without a copy: the file it is memory-mapped from.

transformers loads a safetensors checkpoint as a private memory map of the file: until a weight is
written, its bytes are the file's. The mapping is found from /proc/self/maps (Linux), never from a
name or a config the model carries; the file is opened and must be the mapped one (device and
inode). That is only where to look: a weight counts as restorable from the file once its live bytes
were compared with the file's, bit for bit, before anything is written (`FileOrigin.matches`). A
restore re-checks that the file is unchanged (device, inode, size, mtime, ctime; ctime cannot be set
from user space) and compares what it wrote. Elsewhere (another OS, a weight that is not mapped, a
weight that differs from its file) the caller copies the originals instead.
"""

from __future__ import annotations

import bisect
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .streaming import CHUNK_BYTES, file_identity, same_bits, stream_fd

MAPS = Path("/proc/self/maps")
PAGEMAP = "/proc/self/pagemap"
_PRESENT, _FILE_PAGE = 1 << 63, 1 << 61  # /proc/self/pagemap flags (readable without privileges)


@dataclass
class OpenFile:
    """A file opened (and held open) for the weights mapped from it, with its identity when opened."""

    path: str
    fd: int
    identity: tuple[int, ...]

    @classmethod
    def open(cls, path: str, device: int, inode: int) -> OpenFile | None:
        """The file at `path` if it is still the one mapped (same device and inode), else None."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        identity = file_identity(fd)
        if identity[:2] != (device, inode):
            os.close(fd)
            return None
        return cls(path, fd, identity)

    def unchanged(self) -> bool:
        """Whether the file still holds what it held when opened (its stat identity is the same)."""
        try:
            return file_identity(self.fd) == self.identity
        except OSError:
            return False

    def chunks(self, start: int, nbytes: int, dtype: torch.dtype) -> Iterator[torch.Tensor]:
        return stream_fd(self.fd, start, start + nbytes, dtype, self.path, CHUNK_BYTES)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


@dataclass(frozen=True)
class FileOrigin:
    """The bytes of one live weight as a place in a file: `file` at `start`, `numel` values of `dtype`."""

    file: OpenFile
    start: int
    dtype: torch.dtype
    numel: int
    address: int  # where the live weight lay in memory when it was found

    def chunks(self) -> Iterator[torch.Tensor]:
        return self.file.chunks(self.start, self.numel * self.dtype.itemsize, self.dtype)

    def matches(self, live: torch.Tensor) -> bool:
        """Whether the flat CPU tensor `live` holds, bit for bit, the bytes at this place of the file."""
        if live.dtype != self.dtype or live.numel() != self.numel:
            return False
        if live.data_ptr() == self.address and _file_pages(self.address, self.numel * self.dtype.itemsize):
            return True  # the kernel says every page is still the file's own page: equal without reading it
        offset = 0
        for chunk in self.chunks():
            if not same_bits(live[offset : offset + chunk.numel()], chunk):
                return False
            offset += chunk.numel()
        return offset == self.numel


class MappedFiles:
    """The file-backed memory maps of this process, read once; files are opened on demand and held open."""

    def __init__(self) -> None:
        self._maps: list[tuple[int, int, int, int, int, str]] = []  # start, end, file offset, device, inode, path
        with contextlib.suppress(OSError, ValueError):
            for line in MAPS.read_text().splitlines():
                fields = line.split(maxsplit=5)
                # Private mappings only: a write into a shared one would change the file the originals are kept in.
                private = len(fields) == 6 and fields[1].endswith("p")
                if not private or not fields[5].startswith("/") or fields[5].endswith(" (deleted)"):
                    continue
                start, end = (int(x, 16) for x in fields[0].split("-"))
                major, minor = (int(x, 16) for x in fields[3].split(":"))
                self._maps.append((start, end, int(fields[2], 16), os.makedev(major, minor), int(fields[4]), fields[5]))
        self._maps.sort()
        self._starts = [entry[0] for entry in self._maps]
        self._files: dict[tuple[int, int], OpenFile | None] = {}

    def origin(self, tensor: torch.Tensor) -> FileOrigin | None:
        """Where `tensor`'s bytes lie in the file it is mapped from (a candidate, not yet compared), or None."""
        if tensor.device.type != "cpu" or not tensor.is_contiguous() or tensor.numel() == 0:
            return None
        address, nbytes = tensor.data_ptr(), tensor.numel() * tensor.element_size()
        index = bisect.bisect_right(self._starts, address) - 1
        if index < 0:
            return None
        start, end, offset, device, inode, path = self._maps[index]
        if address + nbytes > end:
            return None
        if (device, inode) not in self._files:
            self._files[device, inode] = OpenFile.open(path, device, inode)
        file = self._files[device, inode]
        position = offset + address - start
        if file is None or position + nbytes > file.identity[2]:
            return None
        return FileOrigin(file, position, tensor.dtype, tensor.numel(), address)

    def close(self) -> None:
        for file in self._files.values():
            if file is not None:
                file.close()


def _file_pages(address: int, nbytes: int) -> bool:
    """Whether every page of memory `address:address + nbytes` (in a private file mapping) is present and still
    the mapped file's own page, never copied on write (from /proc/self/pagemap); False when it cannot tell."""
    page = os.sysconf("SC_PAGE_SIZE")
    first, last = address // page, (address + nbytes - 1) // page
    try:
        fd = os.open(PAGEMAP, os.O_RDONLY)
    except OSError:
        return False
    try:
        data = os.pread(fd, (last - first + 1) * 8, first * 8)
    except OSError:
        return False
    finally:
        os.close(fd)
    if len(data) != (last - first + 1) * 8:
        return False
    wanted = np.uint64(_PRESENT | _FILE_PAGE)
    return bool(np.all(np.frombuffer(data, dtype="<u8") & wanted == wanted))
