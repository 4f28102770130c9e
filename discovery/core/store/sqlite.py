"""The SQLite store: the registry's state in one file, written off the event loop.

Registrations and unregistrations are acknowledged once their transaction committed (the
writer thread commits whatever is queued together: group commit). Liveness is not written one
heartbeat at a time: `touch` only notes the instance, and every `FLUSH_INTERVAL` the liveness of
the noted instances is written in one transaction, as is everything at `close()`. So after a
SIGKILL, liveness is that of a moment at most about one interval (plus a commit) old. A change
watchers see (`changed`: status, critical load) starts a flush at once.

Revisions: the registry's revision is written with every transaction. A restarted registry
starts past it by `REVISION_MARGIN`, more than the changes of the last unwritten interval can
use up, so no revision is handed out twice even after a SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from discovery.core.errors import StoreUnavailable
from discovery.core.model import Instance
from discovery.core.store.base import Restored
from discovery.core.store.sqlite_file import (
    DELETE,
    LIVENESS,
    UPSERT,
    StoreFile,
    liveness_row,
    registration_row,
)
from discovery.core.store.sqlite_writer import Write, Writer

log = logging.getLogger("discovery.store")

#: Seconds between two writes of the liveness that changed.
FLUSH_INTERVAL = 0.5
#: How far past the stored revision a restarted registry starts.
REVISION_MARGIN = 1_000_000


class SqliteStore:
    """The registry's state in the SQLite file at `path` (see the module docstring)."""

    def __init__(self, path: Path, flush_interval: float = FLUSH_INTERVAL) -> None:
        self.path = path
        self.description = f"sqlite {path}"
        self._flush_interval = flush_interval
        self._file: StoreFile | None = None
        self._writer: Writer | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._dirty: set[Instance] = set()
        self._failing = False
        self._flush_soon = False
        self._flushes: set[asyncio.Task[None]] = set()

    async def open(self, revision: Callable[[], int]) -> Restored:
        """Take the file and read it (off the loop); `StoreFailure` when it cannot be used."""
        self._file = await asyncio.to_thread(StoreFile, self.path)
        try:
            restored = await asyncio.to_thread(self._file.load)
        except BaseException:
            await asyncio.to_thread(self._file.close)
            self._file = None
            raise
        loop = asyncio.get_running_loop()
        self._writer = Writer(self._file.connection, loop, revision)
        self._writer.start()
        self._flusher = loop.create_task(self._flush_forever(), name="store-flush")
        return Restored(restored.instances, restored.revision + REVISION_MARGIN)

    async def put(self, instance: Instance) -> None:
        await self._write(Write(UPSERT, registration_row(instance)))

    async def delete(self, service_name: str, instance_id: str) -> None:
        await self._write(Write(DELETE, (service_name, instance_id)))

    def forget(self, service_name: str, instance_id: str) -> None:
        future = self._submit(Write(DELETE, (service_name, instance_id)))
        future.add_done_callback(self._log_expiry_failure)

    def touch(self, instance: Instance) -> None:
        self._dirty.add(instance)

    def changed(self, instance: Instance) -> None:
        self._dirty.add(instance)
        if not self._flush_soon and self._writer is not None:
            # Changes made in the same turn of the loop share one flush.
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self._flush_now)

    async def close(self) -> None:
        """Write the pending liveness, stop the writer, close the file."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        if self._flushes:
            await asyncio.wait(self._flushes)
        if self._writer is not None and not self._writer.closed:
            with contextlib.suppress(StoreUnavailable):
                await self.flush()
            await asyncio.to_thread(self._writer.stop)
        if self._file is not None:
            await asyncio.to_thread(self._file.close)
            self._file = None

    @property
    def commits(self) -> int:
        """Transactions committed since `open()`."""
        return 0 if self._writer is None else self._writer.commits

    async def flush(self) -> None:
        """Write the liveness of every instance touched since the last flush, now."""
        dirty, self._dirty = self._dirty, set()
        # An instance the registry removed (`published` is None) has no row to update.
        rows = [liveness_row(i) for i in dirty if i.published is not None]
        if not rows:
            return
        try:
            await self._write(Write(LIVENESS, rows=rows))
        except StoreUnavailable as exc:
            self._dirty |= dirty  # written with the next flush that succeeds
            if not self._failing:
                log.warning("Store: liveness not written, will retry: %s", exc.message)
            self._failing = True
            raise
        if self._failing:
            log.info("Store: liveness written again")
        self._failing = False

    def _flush_now(self) -> None:
        self._flush_soon = False
        task = asyncio.get_running_loop().create_task(self._flush_quietly())
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush_quietly(self) -> None:
        with contextlib.suppress(StoreUnavailable):  # logged by flush(), retried by the next
            await self.flush()

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval)
            await self._flush_quietly()

    def _submit(self, write: Write) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        write.future = future
        if self._writer is None or self._writer.closed:
            future.set_exception(StoreUnavailable("the store is closed"))
        else:
            self._writer.submit(write)
        return future

    async def _write(self, write: Write) -> None:
        try:
            await self._submit(write)
        except StoreUnavailable:
            raise
        except Exception as exc:
            raise StoreUnavailable(f"the store could not write it: {exc}") from exc

    @staticmethod
    def _log_expiry_failure(future: asyncio.Future[None]) -> None:
        if not future.cancelled() and (exc := future.exception()) is not None:
            log.error("Store: an expiry was not written (it may come back on restart): %s", exc)
