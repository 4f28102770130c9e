"""Stores for tests: one that refuses writes on demand, one that records what it was told and
commits in order after random delays (as a real store with group commit does)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from discovery.core.errors import StoreUnavailable
from discovery.core.model import Instance
from discovery.core.store.base import Restored

Key = tuple[str, str]


class RecordingStore:
    """Keeps registrations in a dict (in the order first written); writes commit in the order
    they came, in batches after random delays up to `delay` (group commit); `failing` refuses
    them."""

    description = "recording"

    def __init__(self, delay: float = 0.0, seed: int = 0) -> None:
        self.rows: dict[Key, Instance] = {}
        self.written: list[Key] = []  # every registration written, in order
        self.touched: set[Instance] = set()
        self.failing = False
        self._delay = delay
        self._random = random.Random(seed)
        self._queue: asyncio.Queue[tuple[Callable[[], None], asyncio.Future[None]]] | None = None
        self._committer: asyncio.Task[None] | None = None
        self._pending = 0

    @property
    def idle(self) -> bool:
        """Every write asked for so far is in `rows`."""
        return self._pending == 0

    async def open(self, revision: Callable[[], int]) -> Restored:
        self._queue = asyncio.Queue()
        self._committer = asyncio.get_running_loop().create_task(self._commit())
        return Restored()

    async def put(self, instance: Instance) -> None:
        def apply() -> None:
            self.written.append(instance.key)
            stored = self.rows.get(instance.key)
            if stored is None:
                self.rows[instance.key] = instance.snapshot()
            else:  # keeps its place and registered_at, as the SQLite store does
                stored.host, stored.port = instance.host, instance.port
                stored.health_endpoint = instance.health_endpoint
                stored.metadata = instance.metadata

        await self._write(apply)

    async def delete(self, service_name: str, instance_id: str) -> None:
        await self._write(lambda: self._drop((service_name, instance_id)))

    def forget(self, instance: Instance) -> None:
        assert self._queue is not None
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending += 1
        self._queue.put_nowait((lambda: self._drop(instance.key), future))

    def _drop(self, key: Key) -> None:
        self.rows.pop(key, None)

    def touch(self, instance: Instance) -> None:
        self.touched.add(instance)

    def changed(self, instance: Instance) -> None:
        self.touched.add(instance)

    async def close(self) -> None:
        if self._committer is not None:
            self._committer.cancel()

    async def _write(self, apply: Callable[[], None]) -> None:
        if self.failing:
            raise StoreUnavailable("disk full (injected)")
        assert self._queue is not None
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending += 1
        self._queue.put_nowait((apply, future))
        await future

    async def _commit(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            if self._delay:
                await asyncio.sleep(self._random.uniform(0, self._delay))
            while not self._queue.empty():  # what came meanwhile shares the commit
                batch.append(self._queue.get_nowait())
            for apply, future in batch:
                apply()
                self._pending -= 1
                if not future.done():
                    future.set_result(None)
