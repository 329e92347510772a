"""The ViSU quadruplets a retrieval evaluation embeds (texts and image files, row i of each list together)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.errors import RetrievalError


@dataclass
class RetrievalData:
    """The quadruplets to embed: row i of each list belongs to quadruplet i."""

    split: str
    safe_texts: list[str]
    unsafe_texts: list[str]
    safe_images: list[Path]
    unsafe_images: list[Path]
    _keys: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.safe_texts)
        if not n or any(len(x) != n for x in (self.unsafe_texts, self.safe_images, self.unsafe_images)):
            raise RetrievalError(f"retrieval data of split {self.split!r} must be non-empty lists of equal length")

    def __len__(self) -> int:
        return len(self.safe_texts)

    def head(self, n: int) -> RetrievalData:
        """The first ``n`` quadruplets."""
        return RetrievalData(
            self.split, self.safe_texts[:n], self.unsafe_texts[:n], self.safe_images[:n], self.unsafe_images[:n]
        )

    def key(self, kind: str) -> str:
        """Digest of what the ``kind`` (text / vision) encoder sees: the texts, or the image files' paths and stats.

        Computed once per kind (every model of a run shares it).
        """
        if kind not in self._keys:
            if kind == "text":
                payload: Any = [self.safe_texts, self.unsafe_texts]
            else:
                stats = [(p.resolve(), p.stat()) for p in [*self.safe_images, *self.unsafe_images]]
                payload = [[str(path), st.st_size, st.st_mtime_ns] for path, st in stats]
            self._keys[kind] = hashlib.sha256(json.dumps([self.split, payload]).encode("utf-8")).hexdigest()
        return self._keys[kind]


def data_from_visu(source: Any) -> RetrievalData:
    """The usable rows of a :class:`eval.data.visu.VisuSource` (texts and image files)."""
    safe, unsafe = zip(*(source.image_paths(i) for i in range(len(source))), strict=True) if len(source) else ((), ())
    return RetrievalData(
        split=source.split,
        safe_texts=[r.safe_text for r in source.rows],
        unsafe_texts=[r.unsafe_text for r in source.rows],
        safe_images=list(safe),
        unsafe_images=list(unsafe),
    )
