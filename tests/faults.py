"""Real I/O failures for tests: a file-size limit makes the OS refuse writes past N bytes (EFBIG), as a full
disk refuses them, without mocking any writer."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
from collections.abc import Iterator


@contextlib.contextmanager
def file_size_limit(max_bytes: int) -> Iterator[None]:
    """Within the block, any write that would make a file larger than ``max_bytes`` fails with an OSError."""
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error, not a killed process
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, old_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def tree(root: os.PathLike | str) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> content), hidden files included."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                out[os.path.relpath(path, root)] = handle.read()
    return out
