"""The quadruplet of Safe-CLIP's data, shared by training and evaluation: a safe (image, text) pair and its
unsafe counterpart. Sources (``eval.data.synthetic.SyntheticWorld``, ``eval.data.visu.VisuSource``) yield them;
``train.data`` turns them into tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

ImageLike = Any
"""Whatever the image processor accepts: a PIL image, an ``(H, W, 3)`` uint8 array or a ``(3, H, W)`` tensor."""


@dataclass(frozen=True)
class Quadruplet:
    """One ViSU-style training item: a safe pair (image, text) and its unsafe counterpart."""

    safe_image: ImageLike
    safe_text: str
    unsafe_image: ImageLike
    unsafe_text: str
    tag: str | None = None
    """NSFW concept of the unsafe pair, when the source knows it."""


@runtime_checkable
class QuadrupletSource(Protocol):
    """What the trainer needs from a data source: a length and quadruplets by index."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Quadruplet: ...
