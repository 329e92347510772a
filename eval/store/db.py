"""The SQLite database of a results store (:class:`~eval.store.results.ResultsStore`): its tables, and opening it.

WAL mode and ``synchronous=FULL``: readers never block the one writer, and a committed row survives a crash.
Writes go through :func:`write_transaction`, taken immediately so that concurrent writers queue instead of
failing.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from eval.errors import StoreError

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS conditions (
    condition TEXT PRIMARY KEY,
    config TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    condition TEXT NOT NULL,
    prompt_id TEXT NOT NULL,
    seed INTEGER NOT NULL,
    prompt_set TEXT NOT NULL,
    prompt TEXT NOT NULL,
    categories TEXT NOT NULL,
    path TEXT NOT NULL,
    extra TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (condition, prompt_id, seed)
);
CREATE TABLE IF NOT EXISTS labels (
    condition TEXT NOT NULL,
    prompt_id TEXT NOT NULL,
    seed INTEGER NOT NULL,
    classifier TEXT NOT NULL,
    flagged INTEGER NOT NULL,
    score REAL NOT NULL,
    details TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (condition, prompt_id, seed, classifier)
);
CREATE TABLE IF NOT EXISTS claims (
    task TEXT NOT NULL,
    condition TEXT NOT NULL,
    prompt_id TEXT NOT NULL,
    seed INTEGER NOT NULL,
    worker TEXT NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (task, condition, prompt_id, seed)
);
CREATE TABLE IF NOT EXISTS texts (
    condition TEXT NOT NULL,
    prompt_id TEXT NOT NULL,
    seed INTEGER NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (condition, prompt_id, seed)
);
"""


def open_database(db_path: Path, *, timeout: float) -> sqlite3.Connection:
    """Connect to (or create) the store database at ``db_path``; refuse one of another schema version."""
    conn = sqlite3.connect(db_path, timeout=timeout, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    with write_transaction(conn):
        for stmt in SCHEMA.split(";"):
            if stmt.strip():
                conn.execute(stmt)
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (json.dumps(SCHEMA_VERSION),))
        elif json.loads(row[0]) != SCHEMA_VERSION:
            raise StoreError(
                f"{db_path} has store schema {row[0]}, this code reads {SCHEMA_VERSION}; use another output folder"
            )
    return conn


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction, taken immediately so concurrent writers queue instead of failing."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
