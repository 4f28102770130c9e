"""The SQLite store: the registry's state in one file, written off the event loop.

Registrations and unregistrations are acknowledged once their transaction committed (the
writer thread commits whatever is queued together: group commit). Liveness is not written one
heartbeat at a time: `touch` only notes the instance, and every `FLUSH_INTERVAL` the liveness of
the noted instances is written in one transaction, as is everything at `close()`. So after a
SIGKILL, liveness is that of a moment at most about one interval (plus a commit) old. A change
watchers see (`changed`: status, critical load) starts a flush at once.

An expiry is decided by the registry (the instance is gone from reads at once) and must not be
lost: until its delete committed, the store keeps it and writes it again with every flush, and
a registration of the same instance meanwhile deletes the expired row in its own transaction. The
delete names the expired row by its `registered_at`, so it never takes a later registration.

A register or unregister waits at most `write_timeout` seconds: a write the thread has not taken
by then (a commit ahead of it stalls on the disk) is refused and never written. One already
being committed is settled by its transaction; the core answers its client meanwhile.

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
    DELETE_EXPIRED,
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
#: Seconds a registration or unregistration waits for the writer (the default).
WRITE_TIMEOUT = 5.0

Key = tuple[str, str]


class SqliteStore:
    """The registry's state in the SQLite file at `path` (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        flush_interval: float = FLUSH_INTERVAL,
        write_timeout: float = WRITE_TIMEOUT,
    ) -> None:
        self.path = path
        self.description = f"sqlite {path}"
        self._flush_interval = flush_interval
        self._write_timeout = write_timeout
        self._file: StoreFile | None = None
        self._writer: Writer | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._dirty: set[Instance] = set()
        self._failing = False
        self._flush_soon = False
        self._flushes: set[asyncio.Task[None]] = set()
        # Expiries not durable yet: key -> `registered_at` of the expired row.
        self._expired: dict[Key, float] = {}
        self._expiries_failing = False
        self._expiring: asyncio.Future[None] | None = None  # the retry in flight

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

    def put(self, instance: Instance) -> asyncio.Future[None]:
        write = Write(UPSERT, registration_row(instance))
        key = instance.key
        expired = self._expired.get(key)
        if expired is not None:  # its expiry is not durable yet: it goes first, in one commit
            write.first = Write(DELETE_EXPIRED, (*key, expired))
        future = self._bounded(write)
        if expired is not None:

            def superseded(future: asyncio.Future[None]) -> None:
                if future.cancelled() or future.exception() is not None:
                    return
                if self._expired.get(key) == expired:
                    del self._expired[key]

            future.add_done_callback(superseded)
        return future

    def delete(self, service_name: str, instance_id: str) -> asyncio.Future[None]:
        return self._bounded(Write(DELETE, (service_name, instance_id)))

    def forget(self, instance: Instance) -> None:
        self._expired[instance.key] = instance.registered_at
        self._write_expiries([(instance.key, instance.registered_at)])

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
        writer = self._writer
        if writer is not None and not writer.closed:
            try:
                # A stalled disk must not keep the process from stopping.
                async with asyncio.timeout(self._write_timeout):
                    await self._write_pending()
            except TimeoutError:
                log.error("Store: the disk took no write for %gs; stopping", self._write_timeout)
            if self._expired:
                log.error(
                    "Store: %d expiries could not be written; those instances come back after "
                    "a restart (with a fresh TTL)",
                    len(self._expired),
                )
            writer.finish()
            if not await asyncio.to_thread(writer.join, self._write_timeout):
                self._file = None  # the thread still holds the connection: the exit frees both
        if self._file is not None:
            await asyncio.to_thread(self._file.close)
            self._file = None

    async def _write_pending(self) -> None:
        if self._flushes:
            await asyncio.wait(self._flushes)
        with contextlib.suppress(StoreUnavailable):
            await self.flush()
        if self._expired:
            await asyncio.wait([self._write_expiries(list(self._expired.items()))])

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
            await self._submit(Write(LIVENESS, rows=rows))
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
            if self._expired and self._expiring is None:  # not written yet: try again
                self._write_expiries(list(self._expired.items()))
            await self._flush_quietly()

    def _write_expiries(self, expiries: list[tuple[Key, float]]) -> asyncio.Future[None]:
        rows = [(*key, registered_at) for key, registered_at in expiries]
        future = self._expiring = self._submit(Write(DELETE_EXPIRED, rows=rows))

        def written(future: asyncio.Future[None]) -> None:
            if self._expiring is future:
                self._expiring = None
            if future.cancelled() or future.exception() is not None:
                if not self._expiries_failing:
                    log.warning(
                        "Store: expiries not written, will retry: %s",
                        "cancelled" if future.cancelled() else future.exception(),
                    )
                self._expiries_failing = True
                return
            for key, registered_at in expiries:
                if self._expired.get(key) == registered_at:
                    del self._expired[key]
            if self._expiries_failing:
                log.info("Store: expiries written again")
            self._expiries_failing = False

        future.add_done_callback(written)
        return future

    def _submit(self, write: Write) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        write.future = future
        if self._writer is None or self._writer.closed:
            future.set_exception(StoreUnavailable("the store is closed"))
        else:
            self._writer.submit(write)
        return future

    def _bounded(self, write: Write) -> asyncio.Future[None]:
        """`write` submitted, refused when the writer has not taken it within the timeout."""
        future = self._submit(write)
        if not future.done():
            timeout = self._write_timeout
            timer = asyncio.get_running_loop().call_later(timeout, self._give_up, write, timeout)
            future.add_done_callback(lambda _: timer.cancel())
        return future

    def _give_up(self, write: Write, timeout: float) -> None:
        """`write` timed out: refuse it if the writer has not taken it (it is never written)."""
        future = write.future
        if future is None or future.done() or self._writer is None:
            return
        if self._writer.abandon(write):
            future.set_exception(StoreUnavailable(f"the store did not answer within {timeout:g}s"))
