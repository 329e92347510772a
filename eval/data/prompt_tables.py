"""Prompt tables: the rows of a CSV / TSV / JSON / JSONL / Parquet file or of a Hub dataset split, made a
:class:`~eval.data.prompt_set.PromptSet` by their columns (text, categories, seed, guidance, id; the usual spellings
found by themselves, any one named explicitly)."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from eval.data.prompt_set import Prompt, PromptSet
from eval.errors import PromptSetError, require

# Column spellings seen in the common copies of each set: the first one present wins.
_TEXT_COLUMNS = ("prompt", "text", "adv_prompt", "caption", "nsfw", "sensitive prompt")
_CATEGORY_COLUMNS = ("categories", "category", "concept", "tag")
_SEED_COLUMNS = ("sd_seed", "evaluation_seed", "seed")
_GUIDANCE_COLUMNS = ("sd_guidance_scale", "evaluation_guidance", "guidance", "guidance_scale")
_ID_COLUMNS = ("case_number", "incremental_id", "prompt_id", "id", "")
# Names an index column goes by (pandas writes an unnamed one: "" or "Unnamed: 0").
_INDEX_COLUMNS = ("", "index", "idx", "unnamed: 0")


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
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


def pick_column(
    columns: Sequence[str],
    candidates: Iterable[str],
    explicit: str | None,
    what: str,
    path: object,
    *,
    required: bool,
) -> str | None:
    """The column named ``explicit`` (refused if missing), else the first of ``candidates`` present (any case),
    else None, or a refusal naming the columns present when the column is ``required``."""
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


def parse_int(value: str, what: str, where: str) -> int | None:
    """A cell as a whole number (``"17"``, ``"17.0"``), None if empty; anything else is refused."""
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


def parse_float(value: str, what: str, where: str) -> float | None:
    """A cell as a number, None if empty; anything else is refused."""
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


def rows_to_prompts(
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
    """The prompt set ``name`` of table rows: one prompt per row, its columns found by :func:`pick_column`
    (explicit names win) and ``keep_columns`` kept in ``extra``; repeated ids are refused."""
    text_col = pick_column(columns, _TEXT_COLUMNS, text_column, "prompt text", source, required=True)
    cat_col = pick_column(columns, _CATEGORY_COLUMNS, category_column, "category", source, required=False)
    seed_col = pick_column(columns, _SEED_COLUMNS, seed_column, "seed", source, required=False)
    guid_col = pick_column(columns, _GUIDANCE_COLUMNS, guidance_column, "guidance", source, required=False)
    id_col = pick_column(columns, _ID_COLUMNS, id_column, "id", source, required=False)
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
                seed=parse_int(row.get(seed_col) or "", "seed", where) if seed_col else None,
                guidance=parse_float(row.get(guid_col) or "", "guidance", where) if guid_col else None,
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
