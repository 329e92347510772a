"""A resumable results store: images on disk plus an SQLite database of items and labels.

An item is one generated image, keyed by ``(condition, prompt_id, seed)``. Its image file is
written atomically (temporary file, fsync, rename) *before* its row is committed, so a row always
points at a complete image; a process killed at any moment leaves no half-written row, and the
primary key makes a second insert of the same item a no-op (no duplicates across resumes or across
processes sharing the store). Labels (one row per item and classifier) live in their own table, so
classification can be cleared and re-run without regenerating anything.

An item can hold a generated text instead of an image (``add_text``, for ``python -m eval i2t``):
the text and its item row are committed in one transaction, and the item's ``path`` is empty.

The store knows nothing about diffusion: ``train`` reuses it to regenerate training images.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from eval.errors import StoreError
from eval.store.claims import StoreClaims
from eval.store.db import open_database, write_transaction
from safe_encoders.atomic import atomic_write_stream

DB_NAME = "results.sqlite"
IMAGES_DIR = "images"

ItemKey = tuple[str, str, int]


@dataclass(frozen=True)
class StoredItem:
    """One stored image and what it was made from. ``path`` is relative to the store's root."""

    condition: str
    prompt_id: str
    seed: int
    prompt_set: str
    prompt: str
    categories: tuple[str, ...]
    path: str
    """Empty for a text item (its text is in the ``texts`` table, see :meth:`ResultsStore.texts`)."""
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def key(self) -> ItemKey:
        return (self.condition, self.prompt_id, self.seed)


@dataclass(frozen=True)
class Label:
    """One classifier's stored decision on one item."""

    classifier: str
    flagged: bool
    score: float
    details: Mapping[str, Any] = field(default_factory=dict, compare=False)


def path_part(name: str) -> str:
    """A file-system-safe, collision-free folder name for an arbitrary string."""
    if re.fullmatch(r"[A-Za-z0-9._+-]{1,80}", name) and not name.startswith("."):
        return name
    clean = re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("._")[:60] or "x"
    return f"{clean}-{hashlib.sha1(name.encode('utf-8')).hexdigest()[:8]}"


def fully_labelled(item_labels: Mapping[str, Label] | None, rule: Iterable[str]) -> bool:
    """Whether an item's labels (``labels()[key]``, or None) include every classifier of ``rule``."""
    return item_labels is not None and all(name in item_labels for name in rule)


def _canonical(config: Mapping[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)


class ResultsStore:
    """The results store rooted at a folder (created if needed). Safe to share between processes.

    Its tables and connection are :mod:`eval.store.db`'s; the claims of the workers sharing it are
    :attr:`claims` (a :class:`~eval.store.claims.StoreClaims` on the same connection).
    """

    def __init__(self, root: str | Path, *, timeout: float = 120.0) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / DB_NAME
        self._conn = open_database(self.db_path, timeout=timeout)
        self.claims = StoreClaims(self._conn, self._write, self.has)

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        """Close the database connection."""
        self._conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        """One write transaction, taken immediately so concurrent writers queue instead of failing."""
        return write_transaction(self._conn)

    # ------------------------------------------------------------------ run metadata

    def set_meta(self, key: str, value: Any) -> None:
        """Record a JSON-serialisable value (library version, config, git hash...)."""
        with self._write() as c:
            c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value, default=str)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def meta_keys(self, prefix: str = "") -> list[str]:
        """Recorded metadata keys starting with ``prefix``."""
        rows = self._conn.execute("SELECT key FROM meta WHERE key LIKE ? ORDER BY key", (prefix + "%",))
        return [k for (k,) in rows if k.startswith(prefix)]

    def register_condition(self, condition: str, config: Mapping[str, Any]) -> None:
        """Record what a condition means; refuse a different meaning for a name already in the store."""
        text = _canonical(config)
        with self._write() as c:
            row = c.execute("SELECT config FROM conditions WHERE condition=?", (condition,)).fetchone()
            if row is None:
                c.execute("INSERT INTO conditions VALUES (?, ?)", (condition, text))
                return
        if row[0] != text:
            old, new = json.loads(row[0]), json.loads(text)
            diff = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
            raise StoreError(
                f"{self.root} already holds condition {condition!r} made with other settings "
                f"(stored vs asked: {diff}); use another --out folder, or clear that condition"
            )

    def conditions(self) -> dict[str, dict[str, Any]]:
        """Every registered condition and its config, in registration order."""
        rows = self._conn.execute("SELECT condition, config FROM conditions ORDER BY rowid").fetchall()
        return {name: json.loads(cfg) for name, cfg in rows}

    # ------------------------------------------------------------------ items

    def image_path(self, condition: str, prompt_id: str, seed: int) -> Path:
        """Where the image of an item is (or will be) stored."""
        return self.root / IMAGES_DIR / path_part(condition) / path_part(prompt_id) / f"{int(seed)}.png"

    def has(self, condition: str, prompt_id: str, seed: int) -> bool:
        row = self._conn.execute(
            "SELECT 1 FROM items WHERE condition=? AND prompt_id=? AND seed=?", (condition, prompt_id, int(seed))
        ).fetchone()
        return row is not None

    def done_keys(self, condition: str | None = None) -> set[ItemKey]:
        """Keys of the stored items (of one condition, or all)."""
        sql = "SELECT condition, prompt_id, seed FROM items"
        rows = self._conn.execute(sql + " WHERE condition=?", (condition,)) if condition else self._conn.execute(sql)
        return {(c, p, int(s)) for c, p, s in rows}

    def add(
        self,
        condition: str,
        prompt_id: str,
        seed: int,
        image: Image.Image,
        *,
        prompt_set: str,
        prompt: str,
        categories: Sequence[str] = (),
        extra: Mapping[str, Any] | None = None,
    ) -> bool:
        """Save the image atomically, then record the item. Returns False if it was already stored."""
        target = self.image_path(condition, prompt_id, seed)
        atomic_write_stream(target, lambda fh: image.save(fh, format="PNG"))
        row = (
            condition,
            prompt_id,
            int(seed),
            prompt_set,
            prompt,
            json.dumps(list(categories)),
            str(target.relative_to(self.root)),
            json.dumps(dict(extra or {}), default=str),
            time.time(),
        )
        with self._write() as c:
            cur = c.execute("INSERT OR IGNORE INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            return cur.rowcount == 1

    def add_text(
        self,
        condition: str,
        prompt_id: str,
        seed: int,
        text: str,
        *,
        prompt_set: str,
        prompt: str,
        categories: Sequence[str] = (),
        extra: Mapping[str, Any] | None = None,
    ) -> bool:
        """Record a generated text and its item in one transaction. Returns False if it was already stored."""
        if not isinstance(text, str):
            raise StoreError(f"add_text needs a str, got {type(text).__name__}")
        key = (condition, prompt_id, int(seed))
        row = (*key, prompt_set, prompt, json.dumps(list(categories)), "", json.dumps(dict(extra or {}), default=str))
        with self._write() as c:
            cur = c.execute("INSERT OR IGNORE INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (*row, time.time()))
            if cur.rowcount != 1:
                return False
            c.execute("INSERT INTO texts VALUES (?, ?, ?, ?)", (*key, text))
            return True

    def texts(self, condition: str | None = None) -> dict[ItemKey, str]:
        """Stored generated texts by item key (of one condition, or all)."""
        sql = "SELECT condition, prompt_id, seed, text FROM texts"
        rows = self._conn.execute(sql + " WHERE condition=?", (condition,)) if condition else self._conn.execute(sql)
        return {(c, p, int(s)): t for c, p, s, t in rows}

    def items(self, condition: str | None = None) -> list[StoredItem]:
        """Stored items in insertion order (of one condition, or all)."""
        sql = "SELECT condition, prompt_id, seed, prompt_set, prompt, categories, path, extra FROM items"
        args: tuple = ()
        if condition is not None:
            sql += " WHERE condition=?"
            args = (condition,)
        rows = self._conn.execute(sql + " ORDER BY rowid", args).fetchall()
        return [
            StoredItem(c, p, int(s), ps, pr, tuple(json.loads(cat)), path, json.loads(ex))
            for c, p, s, ps, pr, cat, path, ex in rows
        ]

    def load_image(self, item: StoredItem) -> Image.Image:
        """The item's image, fully read into memory."""
        with Image.open(self.root / item.path) as im:
            return im.convert("RGB")

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def remove_condition(self, condition: str) -> int:
        """Forget a condition (its items, labels and config); image files are left on disk."""
        with self._write() as c:
            n = c.execute("DELETE FROM items WHERE condition=?", (condition,)).rowcount
            c.execute("DELETE FROM labels WHERE condition=?", (condition,))
            c.execute("DELETE FROM texts WHERE condition=?", (condition,))
            c.execute("DELETE FROM conditions WHERE condition=?", (condition,))
        return n

    # ------------------------------------------------------------------ labels

    def set_labels(self, classifier: str, labelled: Iterable[tuple[ItemKey, bool, float, Mapping[str, Any]]]) -> None:
        """Record (or overwrite) one classifier's decisions: ``(key, flagged, score, details)`` tuples."""
        now = time.time()
        rows = [
            (c, p, int(s), classifier, int(bool(f)), float(score), json.dumps(dict(d), default=str), now)
            for (c, p, s), f, score, d in labelled
        ]
        with self._write() as conn:
            conn.executemany("INSERT OR REPLACE INTO labels VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def labels(self, classifier: str | None = None) -> dict[ItemKey, dict[str, Label]]:
        """Stored labels by item key, then by classifier name."""
        sql = "SELECT condition, prompt_id, seed, classifier, flagged, score, details FROM labels"
        rows = self._conn.execute(sql + " WHERE classifier=?", (classifier,)) if classifier else self._conn.execute(sql)
        out: dict[ItemKey, dict[str, Label]] = {}
        for c, p, s, name, f, score, d in rows:
            out.setdefault((c, p, int(s)), {})[name] = Label(name, bool(f), float(score), json.loads(d))
        return out

    def unlabelled(self, classifier: str, condition: str | None = None) -> list[StoredItem]:
        """Items the classifier has not labelled yet."""
        done = set(self.labels(classifier))
        return [it for it in self.items(condition) if it.key not in done]

    def clear_labels(self, classifier: str | None = None) -> int:
        """Drop stored labels (of one classifier, or all), so classification can be re-run."""
        with self._write() as c:
            if classifier is None:
                return c.execute("DELETE FROM labels").rowcount
            return c.execute("DELETE FROM labels WHERE classifier=?", (classifier,)).rowcount
