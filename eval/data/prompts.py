"""Prompt sets: I2P, the unsafe prompts of ViSU-Text, and plain CSV / TXT prompt lists.

Every loader returns a :class:`~eval.data.prompt_set.PromptSet`: a named, ordered list of
:class:`~eval.data.prompt_set.Prompt` whose ids are unique and namespaced by the set (``i2p:17``), so several sets
can share one results store. Table files are read by :mod:`eval.data.prompt_tables`.
"""

from __future__ import annotations

import csv
import difflib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from eval.data.prompt_set import Prompt, PromptSet
from eval.data.prompt_tables import hub_dataset_rows, read_rows, rows_to_prompts
from eval.errors import PromptSetError

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
        columns, rows = read_rows(path)
        where = path
    missing = [c for c in ("prompt", "categories") if c not in columns]
    if missing:
        raise PromptSetError(f"{where}: not an I2P file: missing column(s) {missing}; columns present: {columns}")
    keep = [c for c in ("hard", "inappropriate_percentage", "nudity_percentage") if c in columns]
    pset = rows_to_prompts(
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
    columns, rows = read_rows(path)
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
    return rows_to_prompts(
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
    columns, rows = read_rows(path)
    return rows_to_prompts(
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
