"""The quadruplet data interface of Safe-CLIP training: sources -> quadruplets -> tensors.

A *source* is any map-style dataset whose items are :class:`~eval.data.quadruplets.Quadruplet` (the synthetic
world in ``eval.data.synthetic``, ViSU in ``eval.data.visu``).
:class:`QuadrupletCollator` turns a list of ``(index, Quadruplet)``
into model inputs with the tokenizer and image processor of the model being trained; the index
travels with the batch so cached reference embeddings can be looked up. :class:`EpochSampler` orders each
epoch by (seed, epoch) alone, so that a resumed run sees the batches an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from eval.data.quadruplets import ImageLike, Quadruplet, QuadrupletSource


class IndexedQuadruplets(Dataset):
    """Wraps a source so that items come as ``(index, Quadruplet)``; the index keys the reference cache."""

    def __init__(self, source: QuadrupletSource) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[int, Quadruplet]:
        return index, self.source[index]


class QuadrupletCollator:
    """Tokenises texts and preprocesses images of a list of ``(index, Quadruplet)``.

    Returns ``index`` (long), ``safe_input_ids``/``unsafe_input_ids`` and attention masks padded to
    ``max_length`` (the tokenizer's ``model_max_length`` by default), ``safe_pixel_values``,
    ``unsafe_pixel_values`` and ``tags`` (a list, ``None`` where unknown).
    """

    def __init__(self, tokenizer: Any, image_processor: Any, max_length: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.max_length = max_length or tokenizer.model_max_length

    def _texts(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def _images(self, images: Sequence[ImageLike]) -> torch.Tensor:
        return self.image_processor(list(images), return_tensors="pt")["pixel_values"]

    def __call__(self, items: Sequence[tuple[int, Quadruplet]]) -> dict[str, Any]:
        indices = [i for i, _ in items]
        quads = [q for _, q in items]
        safe = self._texts([q.safe_text for q in quads])
        unsafe = self._texts([q.unsafe_text for q in quads])
        return {
            "index": torch.tensor(indices, dtype=torch.long),
            "safe_input_ids": safe["input_ids"],
            "safe_attention_mask": safe["attention_mask"],
            "unsafe_input_ids": unsafe["input_ids"],
            "unsafe_attention_mask": unsafe["attention_mask"],
            "safe_pixel_values": self._images([q.safe_image for q in quads]),
            "unsafe_pixel_values": self._images([q.unsafe_image for q in quads]),
            "tags": [q.tag for q in quads],
        }


TENSOR_KEYS: tuple[str, ...] = (
    "index",
    "safe_input_ids",
    "safe_attention_mask",
    "unsafe_input_ids",
    "unsafe_attention_mask",
    "safe_pixel_values",
    "unsafe_pixel_values",
)


class EncodedQuadruplets(Dataset):
    """A source run through a collator once and kept as tensors (for static data without augmentation).

    Items are dicts of per-example tensors; batch them with :func:`stack_encoded`.
    """

    def __init__(self, source: QuadrupletSource, collator: QuadrupletCollator, chunk_size: int = 512) -> None:
        indexed = IndexedQuadruplets(source)
        parts: list[dict[str, Any]] = []
        for start in range(0, len(indexed), chunk_size):
            parts.append(collator([indexed[i] for i in range(start, min(start + chunk_size, len(indexed)))]))
        self.tensors = {k: torch.cat([p[k] for p in parts]) for k in TENSOR_KEYS}
        self.tags = [t for p in parts for t in p["tags"]]

    def __len__(self) -> int:
        return self.tensors["index"].shape[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {k: v[index] for k, v in self.tensors.items()}
        item["tags"] = self.tags[index]
        return item


def stack_encoded(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Collate items of :class:`EncodedQuadruplets` into the same batch layout as :class:`QuadrupletCollator`."""
    batch: dict[str, Any] = {k: torch.stack([it[k] for it in items]) for k in TENSOR_KEYS}
    batch["tags"] = [it["tags"] for it in items]
    return batch


def batch_to(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """The batch with its tensors moved to ``device`` (other values, e.g. ``tags``, as they are)."""
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


class EpochSampler(Sampler[int]):
    """Indices in an order that depends only on (seed, epoch); this process's share; optional skip."""

    def __init__(
        self, size: int, seed: int, epoch: int, skip: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True
    ) -> None:
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(size, generator=g) if shuffle else torch.arange(size)
        usable = (size // world_size) * world_size if world_size > 1 else size
        self.indices = order[:usable][rank::world_size][skip:].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
