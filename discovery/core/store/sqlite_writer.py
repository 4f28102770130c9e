"""The writer thread of the SQLite store: every write goes through it, with group commit.

Writes are queued from the event loop and taken by one thread in the order they came. The
thread takes everything queued at once and writes it in one transaction, so writes that arrive
while a commit is on its way share the next commit (one disk sync for all of them). Each write's
future is settled on the event loop, in queue order, once its transaction committed (or failed:
then every write of that transaction is refused, and none of it is in the file).

A waiter that gives up (the write timed out) can `abandon` a write the thread has not taken yet:
it is then never written. Once taken, its transaction runs to its end, whatever the waiter does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from discovery.core.store.sqlite_file import REVISION

log = logging.getLogger("discovery.store")

#: At most this many writes share one transaction (bounds the time a commit holds them all).
MAX_BATCH = 2000


@dataclass(slots=True)
class Write:
    """One statement: `params` for one row, or `rows` for many (executemany); `first`, when
    given, runs just before it in the same transaction."""

    sql: str
    params: Sequence[Any] = ()
    rows: list[tuple[Any, ...]] | None = None
    future: asyncio.Future[None] | None = None
    first: Write | None = None
    # Set under the writer's lock: taken by the thread, or given up by its waiter (not both).
    taken: bool = False
    abandoned: bool = False


_STOP = Write("")


class Writer:
    """One thread writing to one connection; `submit` from the event loop only."""

    def __init__(
        self,
        connection: sqlite3.Connection,
        loop: asyncio.AbstractEventLoop,
        revision: Callable[[], int],
    ) -> None:
        self._connection = connection
        self._loop = loop
        self._revision = revision
        self._queue: queue.SimpleQueue[Write] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._lock = threading.Lock()  # between taking a batch and abandoning a write
        self.closed = False
        self.commits = 0  # transactions committed (fewer than writes: they share commits)

    def start(self) -> None:
        self._thread.start()

    def submit(self, write: Write) -> None:
        """Queue `write`; its future (if any) is settled on the loop once committed."""
        self._queue.put(write)

    def abandon(self, write: Write) -> bool:
        """Give up `write` if the thread has not taken it yet (then it is never written and its
        future never settled); False when its transaction has begun."""
        with self._lock:
            if write.taken:
                return False
            write.abandoned = True
            return True

    def stop(self, within: float | None = None) -> bool:
        """Write what is queued, then end the thread (blocks: call it off the loop); False when
        it did not end within `within` seconds (a stalled disk)."""
        self.closed = True
        self._queue.put(_STOP)
        self._thread.join(within)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            batch = self._take()
            stop = bool(batch) and batch[-1] is _STOP
            if stop:
                batch.pop()
            if batch:
                error = self._commit(batch)
                self._settle(batch, error)
            if stop:
                return

    def _take(self) -> list[Write]:
        batch = [self._queue.get()]
        while batch[-1] is not _STOP and len(batch) < MAX_BATCH:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        with self._lock:
            for write in batch:
                write.taken = True
            if any(write.abandoned for write in batch):
                batch = [write for write in batch if not write.abandoned]
        return batch

    def _commit(self, batch: list[Write]) -> Exception | None:
        connection = self._connection
        try:
            connection.execute("BEGIN IMMEDIATE")
            for write in batch:
                if write.first is not None:
                    _execute(connection, write.first)
                _execute(connection, write)
            connection.execute(REVISION, (self._revision(),))
            connection.execute("COMMIT")
            self.commits += 1
        except Exception as exc:  # refuse the batch, but keep the thread (and later writes) alive
            if connection.in_transaction:
                try:
                    connection.execute("ROLLBACK")
                except sqlite3.Error:
                    log.exception("Store: rollback failed")
            return exc
        return None

    def _settle(self, batch: list[Write], error: Exception | None) -> None:
        # A closed loop (RuntimeError) has nobody waiting any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(_settle, batch, error)


def _execute(connection: sqlite3.Connection, write: Write) -> None:
    if write.rows is not None:
        connection.executemany(write.sql, write.rows)
    else:
        connection.execute(write.sql, write.params)


def _settle(batch: list[Write], error: Exception | None) -> None:
    for write in batch:
        future = write.future
        if future is None or future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
