"""Workers sharing one results folder: each item is claimed in the store before it is worked on.

Any number of ``eval t2i`` / ``eval classify`` / ``train visu-images`` processes started on the same ``--out``
split the remaining work: a worker claims a few items at a time (one SQLite transaction, so no two workers
claim the same item), works on them, and drops the claims once they are stored. A claim is a lease: a
background thread renews this worker's claims every third of ``lease`` seconds, so the claims of a worker
that dies (kill -9, a lost machine) expire and the other workers redo those items. A worker that finds
nothing left to claim waits while other live workers hold claims, so that it can take over theirs if they
die, and returns once everything is done.

Safe where SQLite's locking works: any number of processes on one machine. Not across machines over a
network filesystem (the store runs SQLite in WAL mode, which needs shared memory on one host): there, give
each machine its own ``--out`` or use ``accelerate launch`` / ``--shard`` on one machine.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from eval.store.results import ItemKey, ResultsStore

T = TypeVar("T")

DEFAULT_LEASE = 120.0
"""Seconds after which the claims of a worker that stopped renewing them (a dead worker) can be taken."""


def new_worker_id() -> str:
    """``host:pid:random``: unique per worker, readable in the store."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Claims:
    """This worker's claims on one store, kept alive by a heartbeat thread while it runs."""

    def __init__(self, root: str | Path, *, lease: float = DEFAULT_LEASE, worker: str | None = None) -> None:
        if lease <= 0:
            raise ValueError(f"the lease must be > 0 seconds, got {lease}")
        self.root, self.lease = Path(root), float(lease)
        self.worker = worker or new_worker_id()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _heartbeat(self) -> None:
        with ResultsStore(self.root) as store:  # its own connection: SQLite connections stay in their thread
            while not self._stop.wait(self.lease / 3):
                store.claims.renew(self.worker, self.lease)

    def __enter__(self) -> Claims:
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease {self.worker}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with ResultsStore(self.root) as store:
            store.claims.release(self.worker)

    def batches(
        self,
        store: ResultsStore,
        task: str,
        todo: Sequence[T],
        key: Callable[[T], ItemKey],
        size: int,
        *,
        rule: Sequence[str] = (),
        poll: float | None = None,
    ) -> Iterator[list[T]]:
        """Yield batches (up to ``size``, in ``todo``'s order) of the items this worker claimed for ``task``.

        The claims of a batch are dropped once the caller asks for the next one (by then it stored them).
        Waits (``poll`` seconds between looks, default a quarter of the lease) while items are held by other
        live workers, and takes them over if their leases expire.
        """
        pending = {key(t): t for t in todo}
        wait = poll if poll is not None else min(self.lease / 4, 5.0)
        while pending:
            claimed, done = store.claims.claim(
                task, pending, worker=self.worker, lease=self.lease, limit=size, rule=rule
            )
            for k in done:
                pending.pop(k, None)
            if claimed:
                batch = [pending.pop(k) for k in claimed]
                try:
                    yield batch
                finally:
                    store.claims.release(self.worker, task, claimed)
                continue
            if pending:  # every remaining item is held by another live worker: wait, take over if it dies
                time.sleep(wait)
