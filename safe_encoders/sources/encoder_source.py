"""`EncoderSource`: the tensors of one encoder, listed from headers and read (and checked) on demand."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..errors import CorruptCheckpointError, SwapVerificationError
from ..format import PROJECTION
from ..registry import EncoderFingerprint, EncoderKind
from ..streaming import (
    CHUNK_BYTES,
    Span,
    check_weight,
    file_identity,
    safetensors_spans,
    stream_fd,
    stream_tensor,
)
from . import checked
from .pickles import load_pickle_weights

CHECK_THREADS = min(4, os.cpu_count() or 1)  # threads checking source tensors (each holds one 8 MB slice)


@dataclass
class EncoderSource:
    """The tensors of one encoder, under their published names, not yet read."""

    kind: EncoderKind
    config: dict[str, Any]
    shapes: dict[str, tuple[int, ...]]
    label: str
    identity: str
    base_model: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    expected_digests: dict[str, str] | None = None
    _locations: dict[str, tuple[Path, str]] = field(default_factory=dict, repr=False)
    # Pickle weight files already loaded (memory-mapped) while listing their tensors.
    _pickled: dict[Path, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)
    _spans: dict[Path, dict[str, Span]] = field(default_factory=dict, repr=False)
    _validated: dict[Path, tuple[int, ...]] = field(default_factory=dict, repr=False)  # file -> identity when checked

    @cached_property
    def fingerprint(self) -> EncoderFingerprint:
        return EncoderFingerprint.from_config(self.config)

    @property
    def has_projection(self) -> bool:
        return PROJECTION[self.kind] in self.shapes

    @property
    def digest(self) -> str | None:
        """The content digest when the source is one of our files (None otherwise)."""
        return self.provenance.get("digest") if self.expected_digests is not None else None

    @property
    def files(self) -> list[Path]:
        """The files the tensors are read from."""
        return sorted({path for path, _ in self._locations.values()})

    def read(self, names: Iterable[str], digests: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
        """Read the named tensors on CPU, each checked (floating point, finite, our files' digests); their
        digests (`format.tensor_digest`) go into `digests` when given."""
        names = list(names)
        self._check_known(names)
        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self._locations[name][0], []).append(name)
        tensors: dict[str, torch.Tensor] = {}
        for path, file_names in by_file.items():
            if path.suffix == ".safetensors":
                with safe_open(path, framework="pt", device="cpu") as handle:
                    for name in file_names:
                        tensors[name] = handle.get_tensor(self._locations[name][1])
            else:
                state = self._pickled.get(path) or load_pickle_weights(path)
                for name in file_names:
                    tensors[name] = state[self._locations[name][1]]
        for name, tensor in tensors.items():
            digest = check_weight(self.label, name, tensor.dtype, tuple(tensor.shape), stream_tensor(tensor))
            self._check_digest(name, digest)
            if digests is not None:
                digests[name] = digest
        return tensors

    def dtype(self, name: str) -> torch.dtype:
        """The stored dtype of tensor `name` (nothing is read)."""
        path, key = self._locations[name]
        return self._span(path, key).dtype if path.suffix == ".safetensors" else self._pickled[path][key].dtype

    def chunks(self, name: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[torch.Tensor]:
        """Tensor `name` as flat slices in its stored dtype, each valid until the next is asked for."""
        path, key = self._locations[name]
        if path.suffix == ".safetensors":
            return self._stream(self._span(path, key), chunk_bytes)
        return stream_tensor(self._pickled[path][key], chunk_bytes)

    def _stream(self, span: Span, chunk_bytes: int) -> Iterator[torch.Tensor]:
        fd = self.open_checked(span.path)
        try:
            yield from stream_fd(fd, span.start, span.end, span.dtype, str(span.path), chunk_bytes)
        finally:
            os.close(fd)

    def open_checked(self, path: Path) -> int:
        """`path` opened for reading; once `validate` took its identity, it must still be that very file: the
        path may lead elsewhere meanwhile (a folder on it renamed away and back) while the file stays unchanged."""
        fd = os.open(path, os.O_RDONLY)
        expected = self._validated.get(path)
        if expected is not None and file_identity(fd) != expected:
            os.close(fd)
            raise SwapVerificationError(
                f"{path} changed while it was being read (written to or replaced, or a folder on its path renamed, "
                "since its check began); nothing read from it is used. Try again once nothing writes the checkpoint."
            )
        return fd

    def on_local_filesystem(self, name: str) -> bool:
        """Whether tensor `name`'s file is on a local filesystem (`checked.LOCAL_FILESYSTEMS`), where its unchanged
        identity proves its bytes unchanged."""
        return checked.local_filesystem(self._locations[name][0])

    def span(self, name: str) -> Span | None:
        """Where tensor `name` lies in its safetensors file (None for a pickle file)."""
        path, key = self._locations[name]
        return self._span(path, key) if path.suffix == ".safetensors" else None

    def validate(self, names: Iterable[str]) -> dict[str, str]:
        """Check the named tensors a slice at a time (floating point, finite, our files' digests), holding
        none of them whole; returns their digests (`format.tensor_digest`).

        A safetensors file already checked while it had its present identity (`checked`) is not read again."""
        names = list(names)
        self._check_known(names)
        started = checked.now_ns()
        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self._locations[name][0], []).append(name)
        digests: dict[str, str] = {}
        fresh = [path for path in by_file if path not in self._validated]  # identity taken now, at `started`
        for path, file_names in by_file.items():
            identity = self._validated.setdefault(path, file_identity(path))  # the first check's identity counts
            memo = checked.remembered(path, identity) if path.suffix == ".safetensors" else {}
            for name in file_names:
                if self._locations[name][1] in memo:
                    digests[name] = memo[self._locations[name][1]]
                    self._check_digest(name, digests[name])

        def check(name: str) -> str:
            digest = check_weight(self.label, name, self.dtype(name), self.shapes[name], self.chunks(name))
            self._check_digest(name, digest)
            return digest

        todo = [name for name in names if name not in digests]
        for name in todo:  # header-only work first, so that the threads share nothing they build
            self.dtype(name)
        # sha256, isfinite and file reads release the GIL: tensors are checked on a few threads, in order.
        with ThreadPoolExecutor(max_workers=CHECK_THREADS) as pool:
            digests.update(zip(todo, pool.map(check, todo), strict=True))
        self.remember_checked(digests, {path: self._validated[path] for path in fresh}, started)
        return {name: digests[name] for name in names}

    def file_identities(self) -> dict[Path, tuple[int, ...]]:
        """`streaming.file_identity` of each file the tensors are read from, taken now unless `validate` took it
        already; from now on every read must be from these very files (`open_checked`)."""
        return {path: self._validated.setdefault(path, file_identity(path)) for path in self.files}

    def remember_checked(
        self, digests: dict[str, str], identities: dict[Path, tuple[int, ...]], started_ns: int
    ) -> None:
        """Remember (`checked`) the digests of tensors that a check begun at `started_ns` passed whole
        (floating point, finite, our files' digests), for each safetensors file still of `identities[path]`."""
        for path, identity in identities.items():
            if path.suffix != ".safetensors" or file_identity(path) != identity:
                continue
            done = {
                key: digests[name]
                for name, (where, key) in self._locations.items()
                if where == path and name in digests
            }
            checked.remember(path, identity, done, started_ns)

    def identity_of(self, span: Span) -> tuple[int, ...] | None:
        """The identity (`streaming.file_identity`) `span`'s file had when `validate` began reading it (None if it
        did not)."""
        return self._validated.get(span.path)

    def changed_since_validation(self) -> list[Path]:
        """The files `validate` read that have been written to or replaced since it began (so what is read from
        them now may not be what was checked)."""
        changed = []
        for path, identity in self._validated.items():
            try:
                same = file_identity(path) == identity
            except OSError:
                same = False
            if not same:
                changed.append(path)
        return changed

    def _check_known(self, names: list[str]) -> None:
        missing = [name for name in names if name not in self._locations]
        if missing:
            raise CorruptCheckpointError(f"{self.label} lacks tensors {missing[:5]} (of {len(missing)} missing).")

    def _check_digest(self, name: str, digest: str) -> None:
        if self.expected_digests is not None and digest != self.expected_digests.get(name):
            raise CorruptCheckpointError(
                f"{self.label}: tensor {name} does not match the digest recorded in the file; "
                "the file is corrupt or was modified. Download or export it again."
            )

    def _span(self, path: Path, key: str) -> Span:
        if path not in self._spans:
            self._spans[path] = safetensors_spans(path)
        return self._spans[path][key]
