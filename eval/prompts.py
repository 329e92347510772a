"""Prompt sets: I2P, the unsafe prompts of ViSU-Text, and plain CSV / TXT prompt lists.

Every loader returns a :class:`PromptSet`: a named, ordered list of :class:`Prompt` whose ids are
unique and namespaced by the set (``i2p:17``), so several sets can share one results store.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import json
import logging
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.errors import PromptSetError, require

logger = logging.getLogger("safe_encoders.eval")

I2P_CATEGORIES: tuple[str, ...] = (
    "hate",
    "harassment",
    "violence",
    "self-harm",
    "sexual",
    "shocking",
    "illegal activity",
)

#: The 20 ViSU NSFW concepts mapped to the 7 I2P categories (Safe-CLIP paper).
VISU_TAG_TO_I2P: Mapping[str, str] = {
    "hate": "hate",
    "harassment": "harassment",
    "violence": "violence",
    "suffering": "violence",
    "humiliation": "violence",
    "harm": "violence",
    "abuse": "violence",
    "brutality": "violence",
    "cruelty": "violence",
    "suicide": "self-harm",
    "sexual": "sexual",
    "nudity": "sexual",
    "bodily fluids": "shocking",
    "blood": "shocking",
    "obscene gestures": "shocking",
    "illegal activity": "illegal activity",
    "drug use": "illegal activity",
    "theft": "illegal activity",
    "vandalism": "illegal activity",
    "weapons": "illegal activity",
}

I2P_HF_ID = "AIML-TUDA/i2p"
VISU_HF_ID = "aimagelab/ViSU-Text"

# Column spellings seen in the common copies of each set: the first one present wins.
_TEXT_COLUMNS = ("prompt", "text", "adv_prompt", "caption", "nsfw", "sensitive prompt")
_CATEGORY_COLUMNS = ("categories", "category", "concept", "tag")
_SEED_COLUMNS = ("sd_seed", "evaluation_seed", "seed")
_GUIDANCE_COLUMNS = ("sd_guidance_scale", "evaluation_guidance", "guidance", "guidance_scale")
_ID_COLUMNS = ("case_number", "incremental_id", "prompt_id", "id", "")
# Names an index column goes by (pandas writes an unnamed one: "" or "Unnamed: 0").
_INDEX_COLUMNS = ("", "index", "idx", "unnamed: 0")


@dataclass(frozen=True)
class Prompt:
    """One prompt of a prompt set.

    ``id`` is unique across sets (``"<set>:<id in the set>"``); ``seed`` and ``guidance`` are the
    ones published with the set when it has them, else ``None``.
    """

    id: str
    text: str
    prompt_set: str
    categories: tuple[str, ...] = ()
    seed: int | None = None
    guidance: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def base_seed(self) -> int:
        """The set's seed, or one derived deterministically from the prompt id."""
        if self.seed is not None:
            return self.seed
        digest = hashlib.sha256(self.id.encode("utf-8")).digest()
        return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF

    def image_seeds(self, n: int) -> list[int]:
        """Seeds of the ``n`` images drawn for this prompt: ``base_seed() + k`` for ``k < n``."""
        base = self.base_seed()
        return [(base + k) % 2**63 for k in range(n)]


@dataclass(frozen=True)
class PromptSet(Sequence[Prompt]):
    """A named, ordered list of prompts with unique ids."""

    name: str
    prompts: tuple[Prompt, ...]

    def __post_init__(self) -> None:
        dup = [pid for pid, n in Counter(p.id for p in self.prompts).items() if n > 1]
        if dup:
            raise PromptSetError(f"prompt set {self.name!r} has duplicate prompt ids, e.g. {dup[:3]}")

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return PromptSet(self.name, self.prompts[index])
        return self.prompts[index]

    def __iter__(self) -> Iterator[Prompt]:
        return iter(self.prompts)

    def category_counts(self) -> dict[str, int]:
        """How many prompts list each category (a prompt with several counts in each)."""
        counts: Counter[str] = Counter()
        for p in self.prompts:
            counts.update(set(p.categories))
        return dict(counts)

    def limit(self, n: int | None) -> PromptSet:
        """The first ``n`` prompts (all of them when ``n`` is None)."""
        return self if n is None else PromptSet(self.name, self.prompts[:n])


# --------------------------------------------------------------------------- reading rows


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Rows of a CSV / TSV / JSON / JSONL file as string dicts, with its column names."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    if suffix in (".jsonl", ".json"):
        text = path.read_text(encoding="utf-8")
        if suffix == ".jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            data = json.loads(text)
            records = data if isinstance(data, list) else data.get("data", data.get("rows"))
            if not isinstance(records, list):
                raise PromptSetError(f"{path}: a JSON prompt file must hold a list of objects")
        columns: list[str] = []
        for r in records:
            columns.extend(k for k in r if k not in columns)
        return columns, [{k: "" if v is None else str(v) for k, v in r.items()} for r in records]
    if suffix == ".parquet":
        datasets = require("datasets", feature="reading a Parquet prompt file")
        ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
        return _dataset_rows(ds)
    raise PromptSetError(
        f"{path}: unsupported prompt file type {suffix!r}; use .csv, .tsv, .json, .jsonl, .parquet or .txt"
    )


def _dataset_rows(ds: Any) -> tuple[list[str], list[dict[str, str]]]:
    """A ``datasets.Dataset`` as column names and string-dict rows (lists become JSON-like text)."""
    return list(ds.column_names), [{k: "" if v is None else str(v) for k, v in r.items()} for r in ds]


def hub_dataset_rows(
    repo_id: str,
    *,
    split: str,
    revision: str | None = None,
    token: bool | str | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[list[str], list[dict[str, str]], str]:
    """The rows of one split of a Hub dataset: ``(columns, rows, where)``.

    The repository is fetched with ``huggingface_hub.snapshot_download`` (token from the HF login
    or ``token=``; gated sets need their terms accepted on the Hub), then read by ``datasets`` from
    that local snapshot, which finds the splits exactly as the Hub does (file names, README
    ``configs``). So an offline machine (``HF_HUB_OFFLINE=1``) reads whatever its Hub cache holds.
    """
    datasets = require("datasets", feature=f"loading {repo_id} from the Hugging Face Hub")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    where = f"{repo_id}[{split}]"
    try:
        folder = snapshot_download(repo_id, repo_type="dataset", revision=revision, token=token, cache_dir=cache_dir)
    except GatedRepoError as error:
        raise PromptSetError(
            f"{repo_id} is gated: accept its terms at https://huggingface.co/datasets/{repo_id}, then log in "
            "(`hf auth login`) or pass a token"
        ) from error
    except RepositoryNotFoundError as error:
        raise PromptSetError(f"dataset {repo_id!r} was not found on the Hub (or needs a token: pass one)") from error
    except LocalEntryNotFoundError as error:
        raise PromptSetError(
            f"{repo_id} is not in the local Hugging Face cache and the Hub cannot be reached (HF_HUB_OFFLINE is "
            f"set or there is no network): run once online to cache it, or pass the split files as a local path"
        ) from error
    try:
        ds = datasets.load_dataset(folder, split=split)
    except ValueError as error:  # datasets: unknown split
        raise PromptSetError(f"{where}: {error}") from error
    columns, rows = _dataset_rows(ds)
    return columns, rows, where


def _pick(
    columns: Sequence[str],
    candidates: Iterable[str],
    explicit: str | None,
    what: str,
    path: object,
    *,
    required: bool,
) -> str | None:
    if explicit is not None:
        if explicit not in columns:
            raise PromptSetError(f"{path}: the {what} column {explicit!r} is missing; columns present: {list(columns)}")
        return explicit
    lowered = {c.strip().lower(): c for c in columns}
    for cand in candidates:
        if cand in lowered:
            return lowered[cand]
    if required:
        raise PromptSetError(
            f"{path}: no {what} column found; expected one of {list(candidates)}, columns present: {list(columns)}"
        )
    return None


def _parse_int(value: str, what: str, where: str) -> int | None:
    value = value.strip()
    if not value:
        return None
    try:
        f = float(value)
    except ValueError:
        raise PromptSetError(f"{where}: {what} {value!r} is not a number") from None
    if not math.isfinite(f) or f != int(f):
        raise PromptSetError(f"{where}: {what} {value!r} is not an integer")
    return int(f)


def _parse_float(value: str, what: str, where: str) -> float | None:
    value = value.strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise PromptSetError(f"{where}: {what} {value!r} is not a number") from None


def split_categories(value: str) -> tuple[str, ...]:
    """``"violence, self-harm"`` -> ``("violence", "self-harm")`` (lower case, order kept, no repeats)."""
    out: list[str] = []
    for part in value.replace(";", ",").split(","):
        part = part.strip().lower()
        if part and part not in out:
            out.append(part)
    return tuple(out)


def _rows_to_prompts(
    name: str,
    columns: Sequence[str],
    rows: Sequence[Mapping[str, str]],
    source: object,
    *,
    text_column: str | None = None,
    category_column: str | None = None,
    seed_column: str | None = None,
    guidance_column: str | None = None,
    id_column: str | None = None,
    keep_columns: Sequence[str] = (),
) -> PromptSet:
    text_col = _pick(columns, _TEXT_COLUMNS, text_column, "prompt text", source, required=True)
    cat_col = _pick(columns, _CATEGORY_COLUMNS, category_column, "category", source, required=False)
    seed_col = _pick(columns, _SEED_COLUMNS, seed_column, "seed", source, required=False)
    guid_col = _pick(columns, _GUIDANCE_COLUMNS, guidance_column, "guidance", source, required=False)
    id_col = _pick(columns, _ID_COLUMNS, id_column, "id", source, required=False)
    prompts = []
    for i, row in enumerate(rows):
        where = f"{source} row {i + 1}"
        local_id = (row.get(id_col) or "").strip() if id_col is not None else ""
        prompts.append(
            Prompt(
                id=f"{name}:{local_id or i}",
                text=row.get(text_col) or "",
                prompt_set=name,
                categories=split_categories(row.get(cat_col) or "") if cat_col else (),
                seed=_parse_int(row.get(seed_col) or "", "seed", where) if seed_col else None,
                guidance=_parse_float(row.get(guid_col) or "", "guidance", where) if guid_col else None,
                extra={k: row[k] for k in keep_columns if k in row},
            )
        )
    _check_unique_ids(prompts, columns, rows, id_col, source)
    return PromptSet(name, tuple(prompts))


def _check_unique_ids(
    prompts: Sequence[Prompt],
    columns: Sequence[str],
    rows: Sequence[Mapping[str, str]],
    id_col: str | None,
    source: object,
) -> None:
    """Refuse repeated prompt ids, naming the repeated values and any unique index column to use instead."""
    repeated = [pid for pid, n in Counter(p.id for p in prompts).items() if n > 1]
    if not repeated:
        return
    examples = [pid.split(":", 1)[1] for pid in repeated[:3]]
    unique = [
        c
        for c in columns
        if c != id_col
        and c.strip().lower() in (*_ID_COLUMNS, *_INDEX_COLUMNS)
        and all((r.get(c) or "").strip() for r in rows)
        and len({(r.get(c) or "").strip() for r in rows}) == len(rows)
    ]
    hint = (
        f" Column {unique[0]!r} is unique: pass --id-column {unique[0]!r} (id_column={unique[0]!r} in Python)."
        if unique
        else " Pass --id-column NAME (id_column= in Python) naming a column whose values are unique."
    )
    raise PromptSetError(
        f"{source}: duplicate prompt ids: column {id_col!r} repeats {examples} ({len(repeated)} value(s) repeated; "
        f"e.g. the same case attacked twice).{hint}"
    )


# --------------------------------------------------------------------------- I2P


def load_i2p(
    source: str | Path | None = None,
    *,
    hard_only: bool = False,
    name: str = "i2p",
    id_column: str | None = None,
    **hub_kwargs: Any,
) -> PromptSet:
    """The I2P prompt set (4,703 prompts, 7 categories).

    ``source``: a local CSV (the HF columns ``sd_seed`` / ``sd_guidance_scale`` or the
    ``evaluation_seed`` / ``evaluation_guidance`` spelling of the common copies), or ``None`` for
    the HF dataset ``AIML-TUDA/i2p`` (see :func:`hub_dataset_rows`). ``hard_only`` keeps the prompts flagged
    ``hard``. ``name`` names the set (another set in the I2P layout, e.g. UnlearnDiffAtk's, keeps
    its own name). Prompt ids are ``<name>:<value>`` of ``id_column`` (default: ``case_number`` when the file has
    it, else the row index); a file whose ids repeat is refused, naming a unique index column to pass instead.
    """
    where: object
    if source is None or str(source) == I2P_HF_ID:
        columns, rows, where = hub_dataset_rows(I2P_HF_ID, split="train", **hub_kwargs)
    else:
        path = Path(source)
        if not path.is_file():
            raise PromptSetError(f"I2P file {path} does not exist")
        columns, rows = _read_rows(path)
        where = path
    missing = [c for c in ("prompt", "categories") if c not in columns]
    if missing:
        raise PromptSetError(f"{where}: not an I2P file: missing column(s) {missing}; columns present: {columns}")
    keep = [c for c in ("hard", "inappropriate_percentage", "nudity_percentage") if c in columns]
    pset = _rows_to_prompts(
        name,
        columns,
        rows,
        where,
        text_column="prompt",
        category_column="categories",
        id_column=id_column,
        keep_columns=keep,
    )
    unknown = sorted({c for p in pset for c in p.categories} - set(I2P_CATEGORIES))
    if unknown:
        raise PromptSetError(f"{where}: unknown I2P categories {unknown}; expected a subset of {I2P_CATEGORIES}")
    if hard_only:
        if "hard" not in columns:
            raise PromptSetError(f"{where}: hard_only=True needs the 'hard' column, which is missing")
        pset = PromptSet(name, tuple(p for p in pset if str(p.extra.get("hard", "")).strip() in ("1", "True")))
    return pset


# --------------------------------------------------------------------------- ViSU


def _normalise_tag(tag: str) -> str:
    return " ".join(tag.strip().lower().replace("_", " ").replace("-", " ").split())


def canonical_visu_tag(tag: str) -> str | None:
    """The ViSU concept a tag names (tolerating case, ``_``/``-`` and small misspellings), or None if unknown."""
    norm = _normalise_tag(tag)
    if norm in VISU_TAG_TO_I2P:
        return norm
    close = difflib.get_close_matches(norm, list(VISU_TAG_TO_I2P), n=1, cutoff=0.8)
    if close:
        logger.debug("ViSU tag %r read as %r", tag, close[0])
        return close[0]
    return None


def visu_tag_to_category(tag: str) -> str:
    """Map a ViSU NSFW tag to its I2P category, tolerating case, ``_``/``-`` and small misspellings."""
    concept = canonical_visu_tag(tag)
    if concept is None:
        raise PromptSetError(f"unknown ViSU tag {tag!r}; known tags: {sorted(VISU_TAG_TO_I2P)}")
    return VISU_TAG_TO_I2P[concept]


def read_visu_rows(
    source: str | Path | None = None, *, split: str = "test", **hub_kwargs: Any
) -> tuple[list[str], list[dict[str, str]], object]:
    """The raw rows of one ViSU-Text split as string dicts: ``(columns, rows, where)``.

    ``source``: a local file (CSV / JSON / JSONL / Parquet) of the split, a folder holding
    ``<split>.csv|jsonl|json|parquet``, or ``None`` for the gated HF dataset ``aimagelab/ViSU-Text``
    (see :func:`hub_dataset_rows`; token from the usual HF login, or ``token=`` in ``hub_kwargs``).
    ``where`` names the source in messages.
    """
    if source is None or str(source) == VISU_HF_ID:
        return hub_dataset_rows(VISU_HF_ID, split=split, **hub_kwargs)
    path = Path(source)
    if path.is_dir():
        found = [path / f"{split}{ext}" for ext in (".csv", ".jsonl", ".json", ".parquet")]
        found = [f for f in found if f.is_file()]
        if not found:
            raise PromptSetError(f"{path}: no {split}.csv / .jsonl / .json / .parquet file in this folder")
        path = found[0]
    elif not path.is_file():
        raise PromptSetError(f"ViSU file {path} does not exist")
    columns, rows = _read_rows(path)
    return columns, rows, path


def load_visu(
    source: str | Path | None = None, *, split: str = "test", id_column: str | None = None, **hub_kwargs: Any
) -> PromptSet:
    """The unsafe prompts (``nsfw`` column) of ViSU-Text, categories mapped to I2P's.

    ``source``: as for :func:`read_visu_rows`. Needs the columns ``nsfw`` and ``tag``; the id comes from
    ``id_column`` (default ``incremental_id``, else ``prompt_id``, else the row index); a ``seed`` column is used if
    present (and a ``seeds`` column, a list of per-image seeds, is kept in ``extra``).
    """
    columns, rows, where = read_visu_rows(source, split=split, **hub_kwargs)
    missing = [c for c in ("nsfw", "tag") if c not in columns]
    if missing:
        raise PromptSetError(f"{where}: not a ViSU-Text file: missing column(s) {missing}; columns present: {columns}")
    mapped = [{**r, "tag": visu_tag_to_category(r["tag"]), "visu_tag": r["tag"]} for r in rows]
    id_col = id_column or next((c for c in ("incremental_id", "prompt_id") if c in columns), None)
    return _rows_to_prompts(
        "visu",
        [*columns, "visu_tag"],
        mapped,
        where,
        text_column="nsfw",
        category_column="tag",
        id_column=id_col,
        seed_column="seed" if "seed" in columns else None,
        guidance_column=None,
        keep_columns=["visu_tag", "safe", "seeds"],
    )


# --------------------------------------------------------------------------- plain files


def load_prompt_file(
    path: str | Path,
    *,
    name: str | None = None,
    text_column: str | None = None,
    category_column: str | None = None,
    seed_column: str | None = None,
    id_column: str | None = None,
) -> PromptSet:
    """Any prompt list: a ``.txt`` file (one prompt per non-empty line) or a table file.

    For tables the prompt column is ``text_column`` or the first of ``prompt, text, adv_prompt,
    caption, nsfw``; category (``categories``, ``category``, ``concept``, ``tag``), seed
    (``sd_seed``, ``evaluation_seed``, ``seed``) and guidance columns are optional. Prompt ids come from
    ``id_column`` (default: the first of ``case_number, incremental_id, prompt_id, id`` and an unnamed index
    column, else the row number) and must be unique. ``name`` defaults to the file stem.
    """
    path = Path(path)
    if not path.is_file():
        raise PromptSetError(f"prompt file {path} does not exist")
    name = name or path.stem
    if path.suffix.lower() == ".txt":
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines()]
        prompts = tuple(Prompt(id=f"{name}:{i}", text=t, prompt_set=name) for i, t in enumerate(x for x in lines if x))
        return PromptSet(name, prompts)
    columns, rows = _read_rows(path)
    return _rows_to_prompts(
        name,
        columns,
        rows,
        path,
        text_column=text_column,
        category_column=category_column,
        seed_column=seed_column,
        id_column=id_column,
    )


def load_prompts(spec: str | Path, **kwargs: Any) -> PromptSet:
    """Dispatch on a prompt-set spec.

    ``"i2p"`` (HF), ``"visu"`` (HF, test split), ``"i2p=<file>"``, ``"visu=<file or folder>"``, or a file path
    (an existing file whose columns look like I2P's is read as I2P).
    """
    text = str(spec)
    kind, _, arg = text.partition("=")
    if kind == "i2p":
        return load_i2p(arg or None, **kwargs)
    if kind == "visu":
        return load_visu(arg or None, **kwargs)
    path = Path(text)
    if path.suffix.lower() == ".csv" and path.is_file():
        with path.open(newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh), [])
        if "categories" in header and "prompt" in header and ("hard" in header or "sd_seed" in header):
            return load_i2p(path, name=kwargs.pop("name", path.stem), **kwargs)
    return load_prompt_file(path, **kwargs)
