"""The ``claims`` table of a results store: which worker holds which item, for how long.

:class:`StoreClaims` is a collaborator of :class:`~eval.store.results.ResultsStore` (``store.claims``): it shares the
store's connection and write transaction, which the store hands it, and reads its items through the store's
public ``has``. The workers that use the claims (the lease heartbeat, the batches) are in :mod:`eval.store.leases`.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from eval.errors import StoreError

if TYPE_CHECKING:
    from eval.store.results import ItemKey

GENERATE, CLASSIFY = "generate", "classify"
TASKS = (GENERATE, CLASSIFY)
"""What a worker claims an item for: making its image, or labelling it with the rule's classifiers."""


class StoreClaims:
    """Claims of workers on the items of one store: ``conn`` its connection, ``write`` its write transaction,
    ``has`` whether it holds an item (given by :class:`~eval.store.results.ResultsStore`, which owns them)."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        write: Callable[[], AbstractContextManager[sqlite3.Connection]],
        has: Callable[[str, str, int], bool],
    ) -> None:
        self._conn = conn
        self._write = write
        self._has = has

    def _done(self, task: str, key: ItemKey, rule: Sequence[str]) -> bool:
        c, p, s = key
        if task == GENERATE:
            return self._has(c, p, s)
        names = {
            n for (n,) in self._conn.execute(
                "SELECT classifier FROM labels WHERE condition=? AND prompt_id=? AND seed=?", (c, p, int(s))
            )
        }  # fmt: skip
        return all(name in names for name in rule)

    def unfinished(self, task: str, keys: Iterable[ItemKey], rule: Sequence[str] = ()) -> list[ItemKey]:
        """The ``keys`` whose ``task`` is not done yet (``generate``: no item; ``classify``: a classifier of
        ``rule`` has not labelled it), in the given order."""
        return [k for k in keys if not self._done(task, k, rule)]

    def claim(
        self,
        task: str,
        keys: Iterable[ItemKey],
        *,
        worker: str,
        lease: float,
        limit: int,
        rule: Sequence[str] = (),
    ) -> tuple[list[ItemKey], list[ItemKey]]:
        """Claim for ``worker`` up to ``limit`` of ``keys`` (in order) whose ``task`` is not done and that no other
        worker holds a live claim on; the claims expire ``lease`` seconds from now unless renewed. One
        transaction: two workers never claim the same item. Returns the keys claimed and the keys found done
        on the way (the caller drops both from what it still has to look at)."""
        if task not in TASKS:
            raise StoreError(f"unknown task {task!r}; one of {TASKS}")
        got: list[ItemKey] = []
        done: list[ItemKey] = []
        with self._write() as c:
            now = time.time()
            for key in keys:
                if len(got) >= limit:
                    break
                if self._done(task, key, rule):
                    done.append(key)
                    continue
                row = c.execute(
                    "SELECT worker, expires FROM claims WHERE task=? AND condition=? AND prompt_id=? AND seed=?",
                    (task, key[0], key[1], int(key[2])),
                ).fetchone()
                if row is not None and row[0] != worker and row[1] > now and not holder_is_gone(row[0]):
                    continue  # a live worker holds it
                c.execute(
                    "INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?, ?)",
                    (task, key[0], key[1], int(key[2]), worker, now + lease),
                )
                got.append((key[0], key[1], int(key[2])))
        return got, done

    def renew(self, worker: str, lease: float) -> int:
        """Push the expiry of every claim of ``worker`` to ``lease`` seconds from now (its heartbeat)."""
        with self._write() as c:
            return c.execute("UPDATE claims SET expires=? WHERE worker=?", (time.time() + lease, worker)).rowcount

    def release(self, worker: str, task: str | None = None, keys: Iterable[ItemKey] | None = None) -> int:
        """Drop claims of ``worker`` (of one task / some keys, or all)."""
        with self._write() as c:
            if keys is None:
                sql, args = "DELETE FROM claims WHERE worker=?", [worker]
                if task is not None:
                    sql, args = sql + " AND task=?", [worker, task]
                return c.execute(sql, args).rowcount
            rows = [(worker, task, k[0], k[1], int(k[2])) for k in keys]
            return c.executemany(
                "DELETE FROM claims WHERE worker=? AND task=? AND condition=? AND prompt_id=? AND seed=?", rows
            ).rowcount

    def live(self, task: str, *, exclude: str | None = None) -> set[ItemKey]:
        """Keys of ``task`` that a worker (other than ``exclude``) holds an unexpired claim on."""
        rows = self._conn.execute(
            "SELECT condition, prompt_id, seed, worker FROM claims WHERE task=? AND expires>?", (task, time.time())
        )
        return {(c, p, int(s)) for c, p, s, w in rows if w != exclude and not holder_is_gone(w)}


def holder_is_gone(worker: str) -> bool:
    """Whether the worker that holds a claim (``host:pid:...``, see ``eval.store.leases.new_worker_id``) is a process of
    this host that no longer exists: its claims are free at once, so that a run killed and started again does
    not wait for the lease to expire. A worker on another host, or a pid that exists (or cannot be checked), is
    taken as alive: its lease decides."""
    host, _, rest = worker.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # e.g. another user's process: it exists
        return False
    return False
