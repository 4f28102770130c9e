"""The writer thread of the SQLite store: every write goes through it, with group commit.

Writes are queued from the event loop and taken by one thread in the order they came. The loop
hands them over once per turn (the writes of every request it read in that turn together: one
wake-up of the thread), and the thread takes everything queued at once and writes it in one
transaction, so writes that arrive while a commit is on its way share the next commit (one disk
sync for all of them, one hand-back to the loop). Each write's
future is settled on the event loop, in queue order, once its transaction committed (or failed:
then every write of that transaction is refused, and none of it is in the file).

A commit costs the process's core more than a write in it (about 0.2 ms of CPU here, mostly
the disk sync, against some 15-35 us a row), and that core is the one answering the clients.
So while writers overlap (the last transaction held more than one write, or several are queued)
and keep coming, the thread waits `LINGER` for more before it begins. A write that comes alone
(one client writing one instance after the other, or the first after a quiet spell) is written
at once: such a client waits about 1.6 ms a registration here rather than 3.4 ms.

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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from discovery.core.errors import StoreUnavailable
from discovery.core.store.sqlite_file import REVISION

log = logging.getLogger("discovery.store")

#: About this many writes at most share one transaction (bounds the time a commit holds them).
MAX_BATCH = 2000
#: While writers overlap and keep coming (the last transaction held more than one write, and
#: ended less than this long ago), the thread gathers this long before it begins the next.
LINGER = 0.002


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
        self._queue: queue.SimpleQueue[list[Write]] = queue.SimpleQueue()
        self._pending: list[Write] = []  # submitted in this turn of the loop
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._lock = threading.Lock()  # between taking a batch and abandoning a write
        self.closed = False
        self.commits = 0  # transactions committed (fewer than writes: they share commits)
        self._shared = False  # whether the last transaction held more than one write ...
        self._ended = 0.0  # ... and when it ended (monotonic)

    def start(self) -> None:
        self._thread.start()

    def submit(self, write: Write) -> None:
        """Queue `write`; its future (if any) is settled on the loop once committed."""
        self._pending.append(write)
        if len(self._pending) == 1:
            self._loop.call_soon(self._hand_over)

    def _hand_over(self) -> None:
        if self._pending:
            self._queue.put(self._pending)
            self._pending = []

    def abandon(self, write: Write) -> bool:
        """Give up `write` if the thread has not taken it yet (then it is never written and its
        future never settled); False when its transaction has begun."""
        with self._lock:
            if write.taken:
                return False
            write.abandoned = True
            return True

    def finish(self) -> None:
        """Take no more writes: the thread ends once it wrote those already submitted."""
        self.closed = True
        self._hand_over()
        self._queue.put([_STOP])

    def join(self, within: float | None = None) -> bool:
        """Wait for the thread to end (blocks: call it off the loop, after `finish`); False
        when it did not within `within` seconds (a stalled disk)."""
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
        batch = self._queue.get()
        self._gather(batch)
        overlapping = self._shared or len(batch) > 1
        if overlapping and batch[-1] is not _STOP and time.monotonic() - self._ended < LINGER:
            time.sleep(LINGER)
            self._gather(batch)
        self._shared = len(batch) > 1
        with self._lock:
            for write in batch:
                write.taken = True
            if any(write.abandoned for write in batch):
                batch = [write for write in batch if not write.abandoned]
        return batch

    def _gather(self, batch: list[Write]) -> None:
        """Add what is queued to `batch` (up to about `MAX_BATCH`)."""
        while batch[-1] is not _STOP and len(batch) < MAX_BATCH:
            try:
                batch += self._queue.get_nowait()
            except queue.Empty:
                break

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
            self._ended = time.monotonic()
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
            refused = StoreUnavailable(f"the store could not write it: {error}")
            refused.__cause__ = error
            future.set_exception(refused)
