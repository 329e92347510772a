"""What a scan reads: a collection of texts and images, as a deterministic stream of items.

Kinds of input (a registry, first match wins when the kind is not given):

- `folder`: images under a folder, recursively (sorted relative paths are the ids);
- `csv`, `jsonl`, `parquet` (a file, or a folder of `.parquet` files): one row per record, with an
  image column (a path relative to the table's folder or `image_root`, image bytes, or a
  `{"bytes", "path"}` struct as `datasets` writes it) and / or a text column;
- `webdataset`: tar shards (a file, a folder of `.tar` files or a glob); the files of a sample share
  the key, the path up to the first dot of the file name (the WebDataset convention). Read with the
  standard library's `tarfile` in streaming mode: no extraction to disk, and none of the webdataset
  package's decoders (its default handlers unpickle `.pyd` / `.pickle` members, which we never do);
- `hf`: a Hugging Face dataset, saved with `save_to_disk` or loaded with `datasets.load_dataset`
  (a Hub id or a local loading script / data folder), streaming or not.

Every item has a `position` (its index in the stream, the same on every run over the same input):
a resumed scan skips the positions already written, and `accelerate` processes take positions
`p % num_processes == process_index`. Items that cannot be read carry an `error` instead of data.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import SafeEncodersError
from ..extras import require
from ..hysac.bounds import Modality
from .views import image_views

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Column names tried, in order, when neither --image-column nor --text-column is given.
IMAGE_COLUMNS = ("image", "image_path", "path", "file", "filepath", "jpg", "png")
TEXT_COLUMNS = ("text", "caption", "prompt", "txt")


class InputError(SafeEncodersError, ValueError):
    """The input of a scan cannot be read as asked (missing file, unknown kind, no usable column)."""


@dataclass(frozen=True)
class InputSpec:
    """Where the items come from and which fields hold them.

    Args:
        source: a folder, a file, a glob of tar shards, or a Hugging Face dataset (Hub id or folder).
        kind: one of `INPUT_KINDS` (default: guessed from `source`).
        image_column, text_column: the fields holding images / texts (for WebDataset: the member
            extensions, e.g. "jpg;png", "txt"). Default: the first of `IMAGE_COLUMNS` / `TEXT_COLUMNS`
            present (for WebDataset: the first image extension of each sample, no text). When one is
            given, only that one is read.
        id_column: the field holding a unique id (default: the row number, or the sample key).
        split: the split of a Hugging Face dataset.
        streaming: stream a Hugging Face dataset instead of downloading it whole.
        image_root: folder that relative image paths of a table are relative to (default: the table's).
    """

    source: str
    kind: str | None = None
    image_column: str | None = None
    text_column: str | None = None
    id_column: str | None = None
    split: str = "train"
    streaming: bool = False
    image_root: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Item:
    """One text or image to score. `image` is a path, bytes, a `{"bytes", "path"}` dict or a PIL image."""

    position: int
    id: str
    modality: Modality
    text: str | None = None
    image: Any = None
    error: str | None = None


@dataclass(frozen=True)
class InputKind:
    """A kind of input: `matches(source)` for guessing, `read(spec)` yielding `(id, modality, payload, error)`."""

    name: str
    matches: Callable[[str], bool]
    read: Callable[[InputSpec], Iterator[tuple[str, Modality, Any, str | None]]]


def read_items(spec: InputSpec) -> Iterator[Item]:
    """The items of `spec`, in a fixed order, each with its position."""
    kind = input_kind(spec)
    for position, (item_id, modality, payload, error) in enumerate(kind.read(spec)):
        if modality == "text":
            yield Item(position, item_id, "text", text=payload, error=error)
        else:
            yield Item(position, item_id, "image", image=payload, error=error)


def validate_input(spec: InputSpec) -> str:
    """Fail now, before a model is loaded, if `spec` cannot be read (missing file, unknown column); its kind."""
    kind = input_kind(spec)
    if kind.name != "hf":  # a Hub dataset would be downloaded twice; it is checked when it is read
        next(iter(kind.read(spec)), None)
    return kind.name


def duplicate_positions(spec: InputSpec, *, refuse: bool = True, shown: int = 5) -> set[int]:
    """The positions of items whose `(id, modality)` an earlier item already has; with `refuse`, an
    `InputError` listing the first few instead (the verdicts of two items under one id could not be told
    apart: a keep list would keep an id that also has an unsafe row)."""
    first: dict[tuple[str, str], int] = {}
    repeated: dict[tuple[str, str], list[int]] = {}
    for item in read_items(spec):
        key = (item.id, item.modality)
        if key in first:
            repeated.setdefault(key, [first[key]]).append(item.position)
        else:
            first[key] = item.position
    if repeated and refuse:
        listed = "; ".join(
            f"{item_id!r} ({modality}) at positions {', '.join(map(str, positions[:3]))}"
            + (", ..." if len(positions) > 3 else "")
            for (item_id, modality), positions in list(repeated.items())[:shown]
        )
        raise InputError(
            f"{spec.source}: {len(repeated)} id(s) are not unique: {listed}. Give each item its own id "
            "(--id-column), or pass --dedupe first to scan the first item of each id and leave the others out."
        )
    return {position for positions in repeated.values() for position in positions[1:]}


def input_kind(spec: InputSpec) -> InputKind:
    if spec.kind is not None:
        if spec.kind not in INPUT_KINDS:
            raise InputError(f"Unknown input kind {spec.kind!r}; known kinds: {', '.join(INPUT_KINDS)}.")
        return INPUT_KINDS[spec.kind]
    for kind in INPUT_KINDS.values():
        if kind.matches(spec.source):
            return kind
    if not Path(spec.source).exists():
        raise InputError(f"{spec.source}: no such file or folder.")
    raise InputError(f"Cannot tell what kind of input {spec.source!r} is; pass --kind ({', '.join(INPUT_KINDS)}).")


# ---------------------------------------------------------------------------------------------- images


def load_image(value: Any, root: str | os.PathLike | None = None) -> Any:
    """Decode an image fully (a truncated file fails here, not later) as the RGB picture a viewer sees first
    (a search query); a scan scores every view (`views.image_views`)."""
    return image_views(value, root=root)[0].image


# ---------------------------------------------------------------------------------------------- folder


def _read_folder(spec: InputSpec) -> Iterator[tuple[str, Modality, Any, str | None]]:
    root = Path(spec.source)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder.")
    real_root = Path(os.path.realpath(root))
    yield from _walk(root, root, real_root, frozenset({real_root}))


def _walk(
    folder: Path, root: Path, real_root: Path, ancestors: frozenset[Path]
) -> Iterator[tuple[str, Modality, Any, str | None]]:
    """Images of `folder` (files first, then sub-folders, each sorted by name). Symbolic links are followed
    inside the scanned root; a link out of it, a link loop, a broken link and a file that is not a regular
    file (a FIFO would block the reader) become rows with the reason, never silence."""
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as error:
        yield folder.relative_to(root).as_posix(), "image", None, f"unreadable folder: {error}"
        return
    folders = []
    for entry in entries:
        path = Path(entry.path)
        name, item_id = entry.name, path.relative_to(root).as_posix()
        real = Path(os.path.realpath(path))
        is_image = name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")
        try:
            is_dir = entry.is_dir()  # follows links
        except OSError:
            is_dir = False
        if entry.is_symlink() and not real.is_relative_to(real_root) and (is_dir or is_image):
            yield item_id, "image", None, f"symbolic link out of the scanned folder (-> {real}): not followed"
        elif is_dir:
            folders.append((path, item_id, real))
        elif is_image:
            try:
                mode = os.stat(path).st_mode
            except OSError as error:
                yield item_id, "image", None, f"unreadable: {type(error).__name__}: {error}"
                continue
            if stat.S_ISREG(mode):
                yield item_id, "image", str(path), None
            else:
                yield item_id, "image", None, "not a regular file (a FIFO, device or socket): not opened"
    for path, item_id, real in folders:
        if real in ancestors:
            yield item_id, "image", None, f"symbolic link loop (-> {real}): not followed again"
        else:
            yield from _walk(path, root, real_root, ancestors | {real})


# ---------------------------------------------------------------------------------------------- tables


def _columns(spec: InputSpec, names: list[str]) -> tuple[str | None, str | None]:
    """(image column, text column) of a table with columns `names`; refuses a table with neither."""
    image, text = spec.image_column, spec.text_column
    for given in (image, text, spec.id_column):
        if given is not None and given not in names:
            raise InputError(f"{spec.source}: no column {given!r}; columns: {names}.")
    if image is None and text is None:
        image = next((name for name in IMAGE_COLUMNS if name in names), None)
        text = next((name for name in TEXT_COLUMNS if name in names), None)
        if image is None and text is None:
            raise InputError(
                f"{spec.source}: found no image or text column among {names}; pass --image-column / --text-column."
            )
    return image, text


def rows_to_items(
    spec: InputSpec, names: list[str], rows: Iterator[dict[str, Any] | str], root: Path, prefix: str = ""
) -> Iterator[tuple[str, Modality, Any, str | None]]:
    """Items of table rows; a row given as a string is one that could not be parsed (the reason).

    A row without any of the columns read (a JSONL line with other fields) is one error row; a row holding
    only some of them gives the items of those it holds.
    """
    image_column, text_column = _columns(spec, names)
    read = [(modality, column) for modality, column in (("text", text_column), ("image", image_column)) if column]
    for number, row in enumerate(rows):
        if isinstance(row, str):
            for modality, _ in read:
                yield f"{prefix}{number}", modality, None, row  # type: ignore[misc]
            continue
        item_id = prefix + (str(row.get(spec.id_column)) if spec.id_column else str(number))
        present = [(modality, column) for modality, column in read if column in row]
        if not present:
            wanted = " or ".join(repr(column) for _, column in read)
            yield item_id, read[0][0], None, f"no {wanted} field (the record has {sorted(map(str, row))})"  # type: ignore[misc]
            continue
        for modality, column in present:
            value = row.get(column)
            if modality == "text":
                yield item_id, "text", value, None if isinstance(value, str) else f"no text in column {column!r}"
            else:
                value = _resolved(value, root)
                yield item_id, "image", value, None if value is not None else f"no image in column {column!r}"


def _resolved(value: Any, root: Path) -> Any:
    """A relative image path (alone, or in a `{"bytes": None, "path"}` struct) against the table's folder."""
    if isinstance(value, str | os.PathLike) and not Path(value).is_absolute():
        return str(root / value)
    path = value.get("path") if isinstance(value, dict) and not value.get("bytes") else None
    if isinstance(path, str) and not Path(path).is_absolute():
        return {**value, "path": str(root / path)}
    return value


def _image_root(spec: InputSpec) -> Path:
    return Path(spec.image_root) if spec.image_root else Path(spec.source).parent


def _read_csv(spec: InputSpec) -> Iterator[tuple[str, Modality, Any, str | None]]:
    path = _existing_file(spec.source)
    # surrogateescape: a byte that is not UTF-8 spoils its row only (an error row), not the scan
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        reader = csv.DictReader(handle)
        yield from rows_to_items(spec, list(reader.fieldnames or []), _csv_rows(reader), _image_root(spec))


def _csv_rows(reader: csv.DictReader) -> Iterator[dict[str, Any] | str]:
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            yield f"line {reader.line_num}: unreadable CSV: {error}"
            continue
        values = [*row.values(), *row.keys()]
        if None in row:
            yield f"line {reader.line_num}: more fields than the header ({len(reader.fieldnames or [])} columns)"
        elif any(isinstance(v, str) and _has_bad_bytes(v) for v in values):
            yield f"line {reader.line_num}: not valid UTF-8"
        else:
            yield row


def _has_bad_bytes(text: str) -> bool:
    return any("\udc80" <= char <= "\udcff" for char in text)


def _read_jsonl(spec: InputSpec) -> Iterator[tuple[str, Modality, Any, str | None]]:
    path = _existing_file(spec.source)

    def rows(handle: Any) -> Iterator[dict[str, Any] | str]:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as error:
                yield f"line {number}: not valid UTF-8: {error}"
                continue
            except json.JSONDecodeError as error:
                yield f"malformed JSON line: {error}"
                continue
            yield row if isinstance(row, dict) else f"JSON line is a {type(row).__name__}, not an object"

    names: dict[str, None] = {}  # the schema: the fields of every line, in order of appearance
    with open(path, "rb") as handle:
        for row in rows(handle):
            if isinstance(row, dict):
                names.update(dict.fromkeys(row))
    with open(path, "rb") as handle:
        yield from rows_to_items(spec, list(names), rows(handle), _image_root(spec))


def _read_parquet(spec: InputSpec) -> Iterator[tuple[str, Modality, Any, str | None]]:
    pq = require("pyarrow.parquet", "scan", feature="Reading Parquet")
    source = Path(spec.source)
    files = sorted(source.rglob("*.parquet")) if source.is_dir() else [_existing_file(spec.source)]
    if not files:
        raise InputError(f"{source}: no .parquet files in this folder.")
    root = Path(spec.image_root) if spec.image_root else (source if source.is_dir() else source.parent)
    for path in files:
        try:
            table = pq.ParquetFile(path)
        except Exception as error:  # pyarrow's ArrowInvalid / OSError: a damaged or non-Parquet file
            raise InputError(f"{path}: not a readable Parquet file ({error}); repair or remove it.") from error
        prefix = f"{path.relative_to(source).as_posix()}:" if source.is_dir() and not spec.id_column else ""
        yield from rows_to_items(spec, table.schema_arrow.names, _parquet_rows(path, table), root, prefix)


def _parquet_rows(path: Path, table: Any) -> Iterator[dict[str, Any]]:
    try:
        for batch in table.iter_batches(batch_size=1024):
            yield from batch.to_pylist()
    except (OSError, ValueError) as error:  # ArrowInvalid is a ValueError
        raise InputError(f"{path}: damaged Parquet data ({error}); repair or remove the file.") from error


def _existing_file(source: str) -> Path:
    path = Path(source)
    if not path.is_file():
        raise InputError(f"{path}: no such file.")
    return path


# ---------------------------------------------------------------------------------------------- webdataset


def _tar_paths(source: str) -> list[Path]:
    path = Path(source)
    if path.is_dir():
        paths = sorted(path.glob("*.tar"))
    elif any(char in source for char in "*?["):
        paths = sorted(Path(p) for p in glob.glob(source))
    else:
        paths = [_existing_file(source)]
    if not paths:
        raise InputError(f"{source}: no .tar shards found.")
    return paths


def _samples(path: Path) -> Iterator[tuple[str, dict[str, bytes]] | str]:
    """(key, {extension: bytes}) per sample of one tar, in order; a string when the tar breaks (the reason)."""
    key, files = None, {}
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                folder, _, name = member.name.rpartition("/")
                stem, dot, extension = name.partition(".")
                if not dot or stem == "":
                    continue  # not part of a sample (e.g. a ".meta" file)
                sample_key = f"{folder}/{stem}" if folder else stem
                if sample_key != key and key is not None:
                    yield key, files
                    files = {}
                key = sample_key
                handle = tar.extractfile(member)
                files[extension.lower()] = handle.read() if handle is not None else b""
    except (tarfile.TarError, OSError, EOFError) as error:
        if key is not None:
            yield key, files
        yield f"unreadable tar: {type(error).__name__}: {error}"
        return
    if key is not None:
        yield key, files


def _read_webdataset(spec: InputSpec) -> Iterator[tuple[str, Modality, Any, str | None]]:
    # "jpg;png": the first of these members present is the sample's image (the WebDataset notation).
    image_extensions = spec.image_column.split(";") if spec.image_column else [e[1:] for e in IMAGE_EXTENSIONS]
    for path in _tar_paths(spec.source):
        for sample in _samples(path):
            if isinstance(sample, str):
                yield f"{path.name}#rest", "image", None, sample
                continue
            key, files = sample
            item_id = f"{path.name}/{key}"
            if spec.id_column and spec.id_column in files:
                item_id = files[spec.id_column].decode("utf-8", errors="replace").strip()
            if spec.text_column:
                raw = files.get(spec.text_column)
                try:
                    text, error = (raw.decode("utf-8"), None) if raw is not None else (None, "no text member")
                except UnicodeDecodeError as decode_error:
                    text, error = None, f"text is not UTF-8: {decode_error}"
                yield item_id, "text", text, error
            if spec.image_column or not spec.text_column:
                found = next((files[e] for e in image_extensions if e in files), None)
                yield item_id, "image", found, None if found is not None else "no image member"


# ---------------------------------------------------------------------------------------------- Hugging Face


def _read_hf(spec: InputSpec) -> Iterator[tuple[str, Modality, Any, str | None]]:
    datasets = require("datasets", "scan", feature="Reading a Hugging Face dataset")
    path = Path(spec.source)
    if path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists()):
        dataset = datasets.load_from_disk(str(path))
        if isinstance(dataset, datasets.DatasetDict):
            if spec.split not in dataset:
                raise InputError(f"{path}: no split {spec.split!r}; splits: {list(dataset)}.")
            dataset = dataset[spec.split]
        if spec.streaming:
            dataset = dataset.to_iterable_dataset()
    else:
        dataset = datasets.load_dataset(spec.source, split=spec.split, streaming=spec.streaming)
    names = list(dataset.features or {})
    image_column, _ = _columns(spec, names)
    if image_column is not None and isinstance(dataset.features.get(image_column), datasets.Image):
        # Decode ourselves, so that a corrupt image becomes a recorded error instead of a crash.
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    root = Path(spec.image_root) if spec.image_root else path
    yield from rows_to_items(spec, names, iter(dataset), root)


def _is_hf(source: str) -> bool:
    path = Path(source)
    if path.is_dir():
        return (path / "state.json").exists() or (path / "dataset_dict.json").exists()
    # A Hub id: "name" or "owner/name", not a path that merely does not exist.
    looks_like_path = source.startswith(("/", ".", "~")) or Path(source).suffix != "" or source.count("/") > 1
    return not path.exists() and not looks_like_path and not any(char in source for char in "*?[")


INPUT_KINDS: dict[str, InputKind] = {
    kind.name: kind
    for kind in (
        InputKind("hf", _is_hf, _read_hf),
        InputKind("folder", lambda s: Path(s).is_dir(), _read_folder),
        InputKind("webdataset", lambda s: s.endswith(".tar"), _read_webdataset),
        InputKind("parquet", lambda s: s.endswith(".parquet"), _read_parquet),
        InputKind("csv", lambda s: s.endswith(".csv"), _read_csv),
        InputKind("jsonl", lambda s: s.endswith((".jsonl", ".ndjson")), _read_jsonl),
    )
}
