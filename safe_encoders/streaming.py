"""Reading a checkpoint's tensors a slice at a time, so that checking and copying an encoder never holds it whole.

A safetensors file is read straight from its bytes (the header says where each tensor lies) into
one reused buffer; a tensor of a pickle file (memory-mapped by torch.load) is sliced. Every slice
is a flat tensor in the stored dtype, valid until the next slice is asked for.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import CorruptCheckpointError

CHUNK_BYTES = 2 << 20
# safetensors dtype names (the format's spec) -> torch dtypes.
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
# Dtypes an encoder's weights can be copied from: floating point wide enough to hold trained weights.
WEIGHT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Span:
    """Where one tensor's bytes lie in a safetensors file."""

    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int


def safetensors_spans(path: Path) -> dict[str, Span]:
    """{tensor name: Span} from a safetensors file's header (no tensor is read)."""
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        base = 8 + length
        size = os.path.getsize(path)
        spans = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            spans[name] = Span(path, SAFETENSORS_DTYPES[info["dtype"]], tuple(info["shape"]), base + begin, base + end)
            if base + end > size:
                raise ValueError(f"tensor {name} ends after the end of the file")
    except (OSError, ValueError, KeyError, TypeError, struct.error) as error:
        raise CorruptCheckpointError(
            f"{path} is not a readable safetensors file ({error!r}). Delete it and download or export it again."
        ) from error
    return spans


def stream_span(span: Span, chunk_bytes: int = CHUNK_BYTES) -> Iterator[torch.Tensor]:
    """The tensor at `span` as flat slices of at most `chunk_bytes`, read into one reused buffer."""
    fd = os.open(span.path, os.O_RDONLY)
    try:
        yield from stream_fd(fd, span.start, span.end, span.dtype, str(span.path), chunk_bytes)
    finally:
        os.close(fd)


def stream_fd(
    fd: int, start: int, end: int, dtype: torch.dtype, label: str, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[torch.Tensor]:
    """Bytes `start:end` of the open file `fd` as flat `dtype` slices of at most `chunk_bytes`, read into one
    reused buffer (each slice is valid until the next is asked for)."""
    item = dtype.itemsize
    step = max(item, chunk_bytes // item * item)
    buffer = bytearray(min(step, end - start) or item)
    position = start
    while position < end:
        size = min(step, end - position)
        got = os.preadv(fd, [memoryview(buffer)[:size]], position)
        if got != size:
            raise CorruptCheckpointError(f"{label} ends inside a tensor; the file is truncated.")
        yield torch.frombuffer(buffer, dtype=dtype, count=size // item)
        position += size


def stream_tensor(tensor: torch.Tensor, chunk_bytes: int = CHUNK_BYTES) -> Iterator[torch.Tensor]:
    """An in-memory (or memory-mapped) tensor as flat slices of at most `chunk_bytes`."""
    flat = tensor.detach().to("cpu").contiguous().view(-1)
    step = max(1, chunk_bytes // max(1, tensor.element_size()))
    for start in range(0, flat.numel(), step):
        yield flat[start : start + step]


def file_identity(file: int | str | os.PathLike) -> tuple[int, ...]:
    """(device, inode, size, mtime_ns, ctime_ns) of an open file descriptor or a path: any write or replacement
    changes it (ctime cannot be set from user space). Raises OSError if the file is gone."""
    stat = os.fstat(file) if isinstance(file, int) else os.stat(file)
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two flat tensors hold the same bytes (compared as same-width integers: -0.0 != 0.0, NaN == NaN)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    as_int = _SAME_WIDTH_INT.get(a.element_size(), torch.uint8)
    return torch.equal(a.view(as_int), b.view(as_int))


_SAME_WIDTH_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def as_bytes(chunk: torch.Tensor) -> memoryview:
    return memoryview(chunk.view(torch.uint8).numpy()) if chunk.numel() else memoryview(b"")


def digest_start(dtype: torch.dtype, shape: tuple[int, ...]) -> hashlib._Hash:
    """A sha256 started as `format.tensor_digest` starts it; feed it the tensor's bytes."""
    return hashlib.sha256(f"{dtype}|{tuple(shape)}|".encode())


def check_weight(
    label: str, name: str, dtype: torch.dtype, shape: tuple[int, ...], chunks: Iterator[torch.Tensor]
) -> str:
    """Check one source tensor, slice by slice: floating point and finite. Returns its digest."""
    if dtype not in WEIGHT_DTYPES:
        raise CorruptCheckpointError(
            f"{label}: tensor {name} is {dtype}, not a floating-point weight; an encoder cannot be copied from it "
            "(a quantized or damaged checkpoint?). Use the original floating-point checkpoint."
        )
    digest = digest_start(dtype, shape)
    for chunk in chunks:
        # min and max are finite only when every value is (NaN propagates): one pass, no mask allocated.
        if chunk.numel() and not all(map(math.isfinite, map(float, torch.aminmax(chunk)))):
            raise CorruptCheckpointError(
                f"{label}: tensor {name} holds NaN or Inf values; the checkpoint is damaged (or was saved from a "
                "diverged run). Download or export it again."
            )
        digest.update(as_bytes(chunk))
    return digest.hexdigest()
