"""The SQLite store on its own: group commit, what a reopened file holds, refusals."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path

import pytest

from discovery.core.errors import StoreUnavailable
from discovery.core.model import HealthStatus, Instance
from discovery.core.store import sqlite_writer
from discovery.core.store.base import Restored
from discovery.core.store.sqlite import REVISION_MARGIN, SqliteStore
from discovery.testing import eventually


def instance(n: int, **fields: object) -> Instance:
    made = Instance("svc", f"i-{n}", "10.0.0.1", 8000 + n, None, {"n": str(n)}, 1000.0 + n)
    for name, value in fields.items():
        setattr(made, name, value)
    made.published = made.snapshot()
    return made


async def test_concurrent_writes_share_commits_and_come_back_in_order(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    store = SqliteStore(path)
    await store.open(lambda: 42)
    await asyncio.gather(*(store.put(instance(n)) for n in range(300)))
    assert store.commits < 300, "every write had a commit of its own"
    await store.delete("svc", "i-7")
    await store.delete("svc", "missing")  # no error
    # Registering again keeps the place and registered_at of the first registration.
    await store.put(instance(3, port=1, registered_at=5.0))
    beaten = instance(5, status=HealthStatus.UNHEALTHY, load_percentage=0.4, last_heartbeat=9.0)
    store.touch(beaten)
    await store.close()

    again = SqliteStore(path)
    restored = await again.open(lambda: 0)
    try:
        ids = [i.instance_id for i in restored.instances]
        assert ids == [f"i-{n}" for n in range(300) if n != 7]
        third = restored.instances[3]
        assert (third.port, third.registered_at, third.metadata) == (1, 1003.0, {"n": "3"})
        fifth = restored.instances[5]
        assert (fifth.status, fifth.load_percentage, fifth.last_heartbeat) == (
            HealthStatus.UNHEALTHY,
            0.4,
            9.0,
        )
        assert restored.revision == 42 + REVISION_MARGIN
    finally:
        await again.close()


async def test_a_lone_writer_is_written_at_once_and_overlapping_writers_are_gathered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lingered: list[float] = []
    pause = time.sleep

    def sleep(seconds: float) -> None:
        lingered.append(seconds)
        pause(seconds)

    monkeypatch.setattr("discovery.core.store.sqlite_writer.time.sleep", sleep)
    store = SqliteStore(tmp_path / "registry.db", flush_interval=3600)
    await store.open(lambda: 0)
    try:
        for n in range(20):  # one client, one write at a time: nothing to wait for
            await store.put(instance(n))
        assert (store.commits, lingered) == (20, [])

        async def client(c: int) -> None:  # 8 clients, each one write at a time
            for n in range(10):
                await store.put(instance(100 + 10 * c + n))

        before = store.commits
        await asyncio.gather(*(client(c) for c in range(8)))
        assert lingered, "overlapping writers were not gathered"
        assert all(s == sqlite_writer.LINGER for s in lingered)
        assert store.commits - before <= 40  # 80 writes
    finally:
        await store.close()
    assert len((await _reopen(tmp_path / "registry.db")).instances) == 100


async def test_a_closed_store_refuses_writes(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "registry.db")
    await store.open(lambda: 0)
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.put(instance(1))


def _stored_status(path: Path, instance_id: str) -> str | None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        row = db.execute(
            "SELECT status FROM instances WHERE instance_id = ?", (instance_id,)
        ).fetchone()
    return None if row is None else str(row[0])


async def test_a_change_watchers_see_is_written_without_waiting_for_the_flush(
    tmp_path: Path,
) -> None:
    path = tmp_path / "registry.db"
    store = SqliteStore(path, flush_interval=3600)  # only `changed` can write it
    await store.open(lambda: 0)
    try:
        probed = instance(1, status=HealthStatus.UNKNOWN)
        await store.put(probed)
        probed.status = HealthStatus.UNHEALTHY
        store.touch(probed)
        probed.status = HealthStatus.HEALTHY
        store.changed(probed)
        await eventually(lambda: _stored_status(path, "i-1") == "healthy")
        quiet = instance(2)
        await store.put(quiet)
        quiet.load_percentage = 0.3
        store.touch(quiet)  # a heartbeat: waits for the flush (here: close)
    finally:
        await store.close()
    assert [i.load_percentage for i in (await _reopen(path)).instances] == [0.0, 0.3]


async def _reopen(path: Path) -> Restored:
    store = SqliteStore(path)
    try:
        return await store.open(lambda: 0)
    finally:
        await store.close()
