"""The datasets of ``eval zero-shot``, as the torch datasets clip_benchmark's metric functions read.

- a local image folder with one sub-folder per class (``classnames.txt`` beside them may rename the classes, one
  line per sub-folder in sorted order; otherwise the folder name with ``_`` read as a space);
- a local caption file (CSV with ``image`` and ``caption`` columns, several rows per image allowed; image paths
  relative to the file) for image-text retrieval;
- any dataset clip_benchmark itself builds (``cifar10``, ``imagenet1k``, ``mscoco_captions``, ...), through its own
  builder (which needs torchvision and downloads / reads the data under ``--dataset-root``).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.zero_shot.models import ZeroShotError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
#: The template of a local folder without ``templates.txt`` (CLIP's own single prompt).
DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {c}.",)


def _open_rgb(path: Path) -> Any:
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


class ImageFolderClasses:
    """``(pixels, class index)`` of a folder of class sub-folders, with ``classes`` and ``templates``."""

    def __init__(self, root: Path, transform: Callable[[Any], Any], templates: Sequence[str]) -> None:
        self.root = Path(root)
        folders = sorted(p for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []
        if not folders:
            raise ZeroShotError(f"{root}: expected one sub-folder of images per class")
        names_file = self.root / "classnames.txt"
        if names_file.is_file():
            names = [line.strip() for line in names_file.read_text(encoding="utf-8").splitlines() if line.strip()]
            if len(names) != len(folders):
                raise ZeroShotError(f"{names_file}: {len(names)} names for {len(folders)} class folders")
        else:
            names = [p.name.replace("_", " ") for p in folders]
        self.classes = names
        self.templates = list(templates)
        self.samples = [
            (p, label)
            for label, folder in enumerate(folders)
            for p in sorted(folder.rglob("*"))
            if p.suffix.lower() in IMAGE_SUFFIXES
        ]
        if not self.samples:
            raise ZeroShotError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in the class folders")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        return self.transform(_open_rgb(path)), label


class CaptionedImages:
    """``(pixels, [captions])`` of a CSV of ``image,caption`` rows (grouped by image, in first-seen order)."""

    def __init__(self, csv_path: Path, transform: Callable[[Any], Any]) -> None:
        csv_path = Path(csv_path)
        groups: dict[str, list[str]] = {}
        with csv_path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
                raise ZeroShotError(f"{csv_path}: expected the columns image, caption")
            for row in reader:
                groups.setdefault(row["image"], []).append(row["caption"])
        if not groups:
            raise ZeroShotError(f"{csv_path}: no rows")
        self.samples = [(csv_path.parent / image, captions) for image, captions in groups.items()]
        missing = [str(p) for p, _ in self.samples if not p.is_file()]
        if missing:
            raise ZeroShotError(f"{csv_path}: {len(missing)} image(s) not found, e.g. {missing[0]}")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, list[str]]:
        path, captions = self.samples[index]
        return self.transform(_open_rgb(path)), captions


def captions_collate(batch: Sequence[tuple[Any, list[str]]]) -> tuple[Any, list[list[str]]]:
    """Stack the images, keep each image's captions as a list (what clip_benchmark's retrieval reads)."""
    import torch

    return torch.stack([image for image, _ in batch]), [captions for _, captions in batch]


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of the table: its name, task and how to build it for a model's image transform."""

    name: str
    task: str  # "zeroshot_classification" or "zeroshot_retrieval"
    source: str
    options: dict[str, Any] = field(default_factory=dict)

    def build(self, transform: Callable[[Any], Any]) -> Any:
        if self.options.get("kind") == "folder":
            return ImageFolderClasses(Path(self.source), transform, self.options["templates"])
        if self.options.get("kind") == "captions":
            return CaptionedImages(Path(self.source), transform)
        from clip_benchmark.datasets.builder import build_dataset

        return build_dataset(
            self.source,
            root=self.options["root"],
            transform=transform,
            split=self.options.get("split", "test"),
            download=self.options.get("download", False),
            task=self.task,
        )

    def collate(self) -> Callable | None:
        if self.options.get("kind") == "captions":
            return captions_collate
        if self.options.get("kind") == "folder":
            return None
        from clip_benchmark.datasets.builder import get_dataset_collate_fn

        return get_dataset_collate_fn(self.source)


def folder_dataset(spec: str, templates_file: Path | None) -> DatasetSpec:
    """``NAME=FOLDER`` (class sub-folders) -> a classification dataset; templates from ``templates_file`` (one per
    line, ``{c}`` standing for the class name) or :data:`DEFAULT_TEMPLATES`."""
    name, folder = _named(spec, "--folder")
    if not Path(folder).is_dir():
        raise ZeroShotError(f"{folder} is not a folder (expected one sub-folder of images per class)")
    templates: Sequence[str] = DEFAULT_TEMPLATES
    if templates_file is not None:
        templates = [t.strip() for t in templates_file.read_text(encoding="utf-8").splitlines() if t.strip()]
        if not templates or not all("{c}" in t for t in templates):
            raise ZeroShotError(f"{templates_file}: expected one template per line, each with {{c}}")
    return DatasetSpec(name, "zeroshot_classification", folder, {"kind": "folder", "templates": tuple(templates)})


def caption_dataset(spec: str) -> DatasetSpec:
    """``NAME=CSV`` (image,caption rows) -> a retrieval dataset."""
    name, path = _named(spec, "--captions")
    if not Path(path).is_file():
        raise ZeroShotError(f"{path} is not a file (expected a CSV of image,caption rows)")
    return DatasetSpec(name, "zeroshot_retrieval", path, {"kind": "captions"})


def benchmark_dataset(name: str, root: Path, split: str, download: bool) -> DatasetSpec:
    """A dataset clip_benchmark knows by name, with the task clip_benchmark assigns it (checked before any model
    loads: its builder needs torchvision)."""
    try:
        from clip_benchmark.datasets.builder import get_dataset_default_task
    except ImportError as error:
        raise ZeroShotError(
            f"--dataset {name}: clip_benchmark's dataset builder cannot be imported ({error}); it needs the "
            "torchvision matching your torch -- local --folder / --captions datasets need neither"
        ) from error
    task = get_dataset_default_task(name)
    if task not in ("zeroshot_classification", "zeroshot_retrieval"):
        raise ZeroShotError(
            f"--dataset {name}: clip_benchmark's task for it is {task!r}, not classification or retrieval"
        )
    return DatasetSpec(name, task, name, {"root": str(root), "split": split, "download": download})


def _named(spec: str, option: str) -> tuple[str, str]:
    name, sep, value = spec.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise ZeroShotError(f"{option} {spec!r}: expected NAME=PATH")
    return name.strip(), value.strip()
