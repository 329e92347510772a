"""The data of ``eval nsfw-retrieval``: per source its NSFW images and the unsafe ViSU texts of its concepts,
shared distractor images and captions, sampled with a fixed seed (Safe-CLIP Table 3 protocol)."""

from __future__ import annotations

import csv
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.data.prompts import VISU_TAG_TO_I2P, canonical_visu_tag
from eval.errors import NSFWRetrievalError
from eval.i2t.report import source_key

logger = logging.getLogger("safe_encoders.eval")

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
NUDITY_CONCEPTS: tuple[str, ...] = ("sexual", "nudity")
OTHER_CONCEPTS: tuple[str, ...] = tuple(c for c in VISU_TAG_TO_I2P if c not in NUDITY_CONCEPTS)
#: ViSU concepts whose unsafe texts go with a source, by :func:`~eval.i2t.report.source_key`; default nudity.
SOURCE_CONCEPTS: dict[str, tuple[str, ...]] = {"smid": OTHER_CONCEPTS}


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted by relative path."""
    root = Path(folder)
    if not root.is_dir():
        raise NSFWRetrievalError(f"image folder {root} does not exist")
    found = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise NSFWRetrievalError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return found


def sample(items: Sequence[Any], n: int | None, seed: int) -> list[Any]:
    """``n`` items drawn without replacement with ``random.Random(seed)``, in their original order
    (all of them when ``n`` is None or not smaller than the list)."""
    if n is None or n >= len(items):
        if n is not None and n > len(items):
            logger.warning("asked for %d items, only %d available: using all", n, len(items))
        return list(items)
    if n < 1:
        raise NSFWRetrievalError(f"sample sizes must be >= 1, got {n}")
    chosen = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in chosen]


def read_captions(path: str | Path, column: str | None = None) -> list[str]:
    """Captions of a file: one per line (``.txt``), or a column of a CSV (``column``; default the ``caption``,
    ``text`` or ``prompt`` column, or the only one). Empty captions are dropped."""
    path = Path(path)
    if not path.is_file():
        raise NSFWRetrievalError(f"caption file {path} does not exist")
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            columns = list(reader.fieldnames or [])
            pick = column or next((c for c in ("caption", "text", "prompt") if c in columns), None)
            if pick is None and len(columns) == 1:
                pick = columns[0]
            if pick not in columns:
                raise NSFWRetrievalError(f"{path}: no caption column {column or 'caption/text/prompt'}; has {columns}")
            texts = [(row.get(pick) or "").strip() for row in reader]
    else:
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    texts = [t for t in texts if t]
    if not texts:
        raise NSFWRetrievalError(f"{path}: no captions")
    return texts


def concepts_for(source: str, overrides: Mapping[str, Sequence[str]] | None = None) -> tuple[str, ...]:
    """ViSU concepts whose unsafe texts query / fill the gallery for ``source``."""
    for table in (overrides or {}, SOURCE_CONCEPTS):
        for name, concepts in table.items():
            if source_key(name) == source_key(source):
                return tuple(concepts)
    return NUDITY_CONCEPTS


def visu_unsafe_texts(visu: str | Path | None, split: str = "test", **hub_kwargs: Any) -> list[tuple[str, str]]:
    """``(unsafe text, ViSU concept)`` of a ViSU-Text split (the gated HF dataset with ``visu=None``)."""
    from eval.data.prompts import load_visu

    out = []
    for prompt in load_visu(visu, split=split, **hub_kwargs):
        concept = canonical_visu_tag(str(prompt.extra.get("visu_tag", "")))
        if concept is not None:
            out.append((prompt.text, concept))
    return out


@dataclass
class NSFWRetrievalData:
    """Per source: its NSFW images and matched unsafe texts; shared distractor images and captions."""

    nsfw_images: dict[str, list[Path]]
    unsafe_texts: dict[str, list[str]]
    distractor_images: list[Path]
    distractor_texts: list[str]
    concepts: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for source in self.nsfw_images:
            if not self.nsfw_images[source] or not self.unsafe_texts.get(source):
                raise NSFWRetrievalError(f"source {source!r} has no NSFW images or no unsafe texts")
        if not self.distractor_images or not self.distractor_texts:
            raise NSFWRetrievalError("need distractor images and distractor captions")

    def describe(self) -> dict[str, Any]:
        return {
            "sources": {
                s: {"images": len(v), "unsafe_texts": len(self.unsafe_texts[s]), "concepts": self.concepts.get(s)}
                for s, v in self.nsfw_images.items()
            },
            "distractor_images": len(self.distractor_images),
            "distractor_texts": len(self.distractor_texts),
        }


def build_data(
    sources: Mapping[str, str | Path],
    distractor_images: str | Path,
    distractor_texts: Sequence[str],
    unsafe: Sequence[tuple[str, str | None]],
    *,
    images_per_source: int | None = 1000,
    distractors: int | None = 10000,
    texts_per_source: int | None = None,
    seed: int = 0,
    concepts: Mapping[str, Sequence[str]] | None = None,
) -> NSFWRetrievalData:
    """Sample the protocol's data. ``unsafe`` holds ``(text, concept)`` pairs; a concept of None (texts from a
    plain file) goes with every source."""
    nsfw, texts, chosen = {}, {}, {}
    for name, folder in sources.items():
        nsfw[name] = sample(list_images(folder), images_per_source, seed)
        chosen[name] = concepts_for(name, concepts)
        matched = [t for t, c in unsafe if c is None or c in chosen[name]]
        if not matched:
            raise NSFWRetrievalError(f"no unsafe text of the concepts {list(chosen[name])} for source {name!r}")
        texts[name] = sample(matched, texts_per_source, seed)
    return NSFWRetrievalData(
        nsfw_images=nsfw,
        unsafe_texts=texts,
        distractor_images=sample(list_images(distractor_images), distractors, seed),
        distractor_texts=sample(list(distractor_texts), distractors, seed),
        concepts=chosen,
    )
