"""ViSU quadruplets for the trainer: ViSU-Text rows + COCO images + regenerated unsafe images.

One row of ViSU-Text (``incremental_id, safe, nsfw, coco_id, tag, prompt_id``) is one quadruplet:

- ``safe`` (t) and ``nsfw`` (t*) are the texts;
- v is the COCO image ``{coco_id:012d}.jpg`` found under ``train2017/`` or ``val2017/`` of the COCO
  root (the Karpathy splits draw from both);
- v* is the image kept for the row by the regeneration (``python -m train visu-images``), read
  from its manifest (``manifest.json`` or ``manifest.csv``);
- the tag is mapped to its I2P category (the known misspelling and other small typos tolerated);
  unknown tags are counted in the report and the quadruplet's tag is ``None``.

A row whose safe or unsafe image is missing is never dropped silently: it is listed, with the
reason, in a JSON report (written atomically) and either skipped (``on_missing="skip"``) or the
run fails (``on_missing="fail"``) after the report is written.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from eval.data.prompt_tables import parse_int as parse_int_cell
from eval.data.prompts import VISU_TAG_TO_I2P, _normalise_tag, canonical_visu_tag, read_visu_rows
from eval.data.quadruplets import Quadruplet
from eval.errors import PromptSetError
from safe_encoders.atomic import atomic_write_text

logger = logging.getLogger(__name__)  # not under "safe_encoders": its NullHandler would swallow the warnings

VISU_SPLITS: tuple[str, ...] = ("train", "validation", "test")
COCO_FOLDERS: tuple[str, ...] = ("train2017", "val2017")
REQUIRED_COLUMNS: tuple[str, ...] = ("safe", "nsfw", "coco_id", "tag")
ON_MISSING: tuple[str, ...] = ("skip", "fail")
MANIFEST_NAMES: tuple[str, ...] = ("manifest.json", "manifest.csv")
REPORT_VERSION = 1


class VisuDataError(PromptSetError):
    """ViSU rows, COCO images or the unsafe-image manifest are missing or unreadable."""


@dataclass(frozen=True)
class VisuRow:
    """One ViSU-Text row as read (before its images are looked up)."""

    row_id: str
    """``incremental_id`` (else ``prompt_id``, else the row's position): the key of the manifest."""
    safe_text: str
    unsafe_text: str
    coco_id: int | None
    tag: str
    """The tag as written in the release."""
    concept: str | None
    """The ViSU concept the tag names once spelling is tolerated; None when unknown."""
    seed: int | None = None
    seeds: tuple[int, ...] = ()

    @property
    def category(self) -> str | None:
        """The I2P category of the tag (None when the tag is unknown)."""
        return VISU_TAG_TO_I2P[self.concept] if self.concept else None


def coco_file_name(coco_id: int) -> str:
    """COCO 2017's file name of an image id: 12 zero-padded digits, ``.jpg``."""
    return f"{int(coco_id):012d}.jpg"


def _parse_int(value: str | None) -> int | None:
    """An integer cell; None when empty or not an integer (NaN and infinities included)."""
    try:
        return parse_int_cell(value or "", "value", "ViSU-Text")
    except PromptSetError:
        return None


def _parse_seeds(value: str) -> tuple[int, ...]:
    value = (value or "").strip()
    if not value:
        return ()
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = [p for p in value.replace(";", ",").split(",") if p.strip()]
    if not isinstance(parsed, list):
        parsed = [parsed]
    try:
        return tuple(int(p) for p in parsed)
    except (TypeError, ValueError):
        raise VisuDataError(f"cannot read the seeds {value!r} as a list of integers") from None


def read_visu(source: str | Path | None = None, *, split: str = "test", **hub_kwargs: Any) -> list[VisuRow]:
    """The rows of one ViSU-Text split (HF dataset with ``source=None``, or a local file / folder).

    ``hub_kwargs`` go to ``datasets.load_dataset`` (e.g. ``token=``). Rows keep their order.
    """
    columns, rows, where = read_visu_rows(source, split=split, **hub_kwargs)
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise VisuDataError(f"{where}: not a ViSU-Text split: missing column(s) {missing}; columns present: {columns}")
    id_col = next((c for c in ("incremental_id", "prompt_id") if c in columns), None)
    out: list[VisuRow] = []
    seen: set[str] = set()
    for i, r in enumerate(rows):
        row_id = (r.get(id_col) or "").strip() if id_col else ""
        row_id = row_id or str(i)
        if row_id in seen:
            raise VisuDataError(f"{where}: duplicate row id {row_id!r} (column {id_col!r})")
        seen.add(row_id)
        out.append(
            VisuRow(
                row_id=row_id,
                safe_text=r["safe"],
                unsafe_text=r["nsfw"],
                coco_id=_parse_int(r["coco_id"]),
                tag=r["tag"],
                concept=canonical_visu_tag(r["tag"]),
                seed=_parse_int(r.get("seed", "")),
                seeds=_parse_seeds(r.get("seeds", "")),
            )
        )
    return out


class CocoIndex:
    """The COCO 2017 image files under a root (``train2017/`` and ``val2017/``), listed once."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise VisuDataError(f"COCO root {self.root} is not a folder; it must hold train2017/ and/or val2017/")
        self._files: dict[str, Path] = {}
        for folder in COCO_FOLDERS:
            sub = self.root / folder
            if sub.is_dir():
                with os.scandir(sub) as entries:
                    for e in entries:
                        if e.name.endswith(".jpg"):
                            self._files.setdefault(e.name, sub / e.name)
        if not any((self.root / f).is_dir() for f in COCO_FOLDERS):
            raise VisuDataError(f"COCO root {self.root} holds neither {COCO_FOLDERS[0]}/ nor {COCO_FOLDERS[1]}/")

    def find(self, coco_id: int) -> Path | None:
        """The image file of ``coco_id``, or None."""
        return self._files.get(coco_file_name(coco_id))


def read_manifest(path: str | Path) -> dict[tuple[str, str], Mapping[str, Any]]:
    """Rows of a regeneration manifest keyed by ``(split, row_id)``; ``image`` made absolute.

    ``path``: ``manifest.json`` / ``manifest.csv`` or the regeneration folder that holds one.
    """
    path = Path(path)
    if path.is_dir():
        found = [path / n for n in MANIFEST_NAMES if (path / n).is_file()]
        if not found:
            raise VisuDataError(f"{path} holds no regeneration manifest ({' or '.join(MANIFEST_NAMES)})")
        path = found[0]
    if not path.is_file():
        raise VisuDataError(f"regeneration manifest {path} does not exist")
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        rows = data["rows"] if isinstance(data, dict) else data
    else:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    out: dict[tuple[str, str], Mapping[str, Any]] = {}
    for r in rows:
        image = r.get("image") or ""
        out[(str(r["split"]), str(r["row_id"]))] = {
            **r,
            "image": str((path.parent / image).resolve()) if image else "",
        }
    return out


@dataclass(frozen=True)
class MissingRow:
    """A row left out for want of an image."""

    row_id: str
    coco_id: int | None
    reasons: tuple[str, ...]


@dataclass
class VisuReport:
    """What was found for a split: counts, missing rows with reasons, unknown and misspelled tags."""

    split: str
    total_rows: int
    usable_rows: int
    on_missing: str
    missing: list[MissingRow] = field(default_factory=list)
    unknown_tags: dict[str, int] = field(default_factory=dict)
    tags_read_as: dict[str, str] = field(default_factory=dict)
    coco_root: str | None = None
    manifest: str | None = None

    def reason_counts(self) -> dict[str, int]:
        """How many missing rows have each reason (a row may have two)."""
        return dict(Counter(r for m in self.missing for r in m.reasons))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["version"] = REPORT_VERSION
        out["missing_count"] = len(self.missing)
        out["missing_by_reason"] = self.reason_counts()
        return out

    def write(self, path: str | Path) -> Path:
        """Write the report as JSON, atomically (temporary file then rename)."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True))


def _load_rgb(path: str | Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


class VisuSource:
    """A :class:`~train.data.QuadrupletSource` over one ViSU split.

    Args:
        text: ViSU-Text: ``None`` (the gated HF dataset, token via ``hub_kwargs`` or the HF login),
            a file of the split, or a folder with ``<split>.csv|json|jsonl|parquet``; or rows
            already read with :func:`read_visu`.
        split: ``train``, ``validation`` or ``test``.
        coco_root: folder holding ``train2017/`` and/or ``val2017/``, or a :class:`CocoIndex` of it
            (splits of one run share one listing).
        unsafe_images: the regeneration folder or its manifest file.
        manifest: that manifest already read with :func:`read_manifest` (else it is read here).
        on_missing: ``"skip"`` rows lacking an image (they are listed in the report) or ``"fail"``.
        report_path: where the JSON report is written (also before failing); None writes nothing.
    """

    def __init__(
        self,
        text: str | Path | Sequence[VisuRow] | None,
        *,
        split: str,
        coco_root: str | Path | CocoIndex,
        unsafe_images: str | Path,
        manifest: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
        on_missing: str = "skip",
        report_path: str | Path | None = None,
        **hub_kwargs: Any,
    ) -> None:
        if on_missing not in ON_MISSING:
            raise ValueError(f"VisuSource: on_missing must be one of {ON_MISSING}, got {on_missing!r}")
        rows = list(text) if isinstance(text, Sequence) and not isinstance(text, str) else None
        if rows is None:
            rows = read_visu(text, split=split, **hub_kwargs)  # type: ignore[arg-type]
        coco = coco_root if isinstance(coco_root, CocoIndex) else CocoIndex(coco_root)
        if manifest is None:
            manifest = read_manifest(unsafe_images)
        self.split = split
        self.rows: list[VisuRow] = []
        self._images: list[tuple[Path, Path]] = []
        report = VisuReport(
            split=split,
            total_rows=len(rows),
            usable_rows=0,
            on_missing=on_missing,
            coco_root=str(coco.root),
            manifest=str(unsafe_images),
        )
        unknown: Counter[str] = Counter()
        for row in rows:
            if row.concept is None:
                unknown[row.tag] += 1
            elif row.concept != _normalise_tag(row.tag):
                report.tags_read_as[row.tag] = row.concept
            reasons: list[str] = []
            safe = coco.find(row.coco_id) if row.coco_id is not None else None
            if row.coco_id is None:
                reasons.append("no coco_id")
            elif safe is None:
                reasons.append(f"COCO image {coco_file_name(row.coco_id)} not found")
            entry = manifest.get((split, row.row_id))
            unsafe: Path | None = None
            if entry is None:
                reasons.append("row not in the regeneration manifest")
            elif entry.get("status") != "kept" or not entry.get("image"):
                reasons.append(f"unsafe image {entry.get('status') or 'absent'} in the regeneration")
            else:
                unsafe = Path(entry["image"])
                if not unsafe.is_file():
                    reasons.append(f"unsafe image file {unsafe} not found")
            if reasons:
                report.missing.append(MissingRow(row.row_id, row.coco_id, tuple(reasons)))
                continue
            assert safe is not None and unsafe is not None
            self.rows.append(row)
            self._images.append((safe, unsafe))
        report.unknown_tags = dict(unknown)
        report.usable_rows = len(self.rows)
        self.report = report
        if report_path is not None:
            report.write(report_path)
        if unknown:
            logger.warning(
                "ViSU %s: %d row(s) with unknown tags %s (tag set to None)",
                split,
                sum(unknown.values()),
                sorted(unknown),
            )
        if report.missing:
            where = f"; listed in {report_path}" if report_path is not None else ""
            msg = (
                f"ViSU {split}: {len(report.missing)} of {len(rows)} rows lack an image "
                f"({report.reason_counts()}){where}"
            )
            if on_missing == "fail":
                raise VisuDataError(msg + "; pass on_missing='skip' to train without them")
            logger.warning("%s; skipped", msg)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Quadruplet:
        row = self.rows[index]
        safe, unsafe = self._images[index]
        return Quadruplet(
            safe_image=_load_rgb(safe),
            safe_text=row.safe_text,
            unsafe_image=_load_rgb(unsafe),
            unsafe_text=row.unsafe_text,
            tag=row.category,
        )

    def image_paths(self, index: int) -> tuple[Path, Path]:
        """The safe (COCO) and unsafe (regenerated) image files of a usable row."""
        return self._images[index]


def visu_splits(
    text: str | Path | None,
    *,
    coco_root: str | Path,
    unsafe_images: str | Path,
    report_dir: str | Path,
    splits: Sequence[str] = ("train", "validation"),
    on_missing: str = "skip",
    **hub_kwargs: Any,
) -> dict[str, VisuSource]:
    """One :class:`VisuSource` per split, each writing ``report_dir/visu-<split>-report.json``.

    The COCO folders are listed and the manifest is read once, for all splits.
    """
    coco = CocoIndex(coco_root)
    manifest = read_manifest(unsafe_images)
    return {
        s: VisuSource(
            text,
            split=s,
            coco_root=coco,
            unsafe_images=unsafe_images,
            manifest=manifest,
            on_missing=on_missing,
            report_path=Path(report_dir) / f"visu-{s}-report.json",
            **hub_kwargs,
        )
        for s in splits
    }
