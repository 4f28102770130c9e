"""The SQLite store when its writes fail or stall, in-process over REST and gRPC.

Faults are injected into the store's own connection through SQLite's authorizer, which the
writer thread calls while it prepares each statement: denying an action makes that statement
(and so its whole transaction) fail, holding one stalls the writer inside its transaction, as a
disk that stops answering would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from discovery.core.errors import StoreUnavailable
from discovery.core.model import Instance
from discovery.core.store.sqlite import SqliteStore
from discovery.server import DiscoveryServer
from discovery.testing import eventually, run_server
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc
from tests.conftest import AUTH, GRPC_AUTH, SECRET, registration


class Faults:
    """What the store's connection may do: actions denied, and actions that wait for
    `release()` (the writer thread stalls there)."""

    def __init__(self, store: SqliteStore) -> None:
        assert store._file is not None, "open the store first"
        self._connection = store._file.connection
        self._denied: frozenset[int] = frozenset()
        self._held: frozenset[int] = frozenset()
        self.reached = threading.Event()  # the writer stalls on a held action
        self._go = threading.Event()

    def deny(self, *actions: int) -> None:
        self._denied = frozenset(actions)
        self._install()

    def hold(self, *actions: int) -> None:
        self._held = frozenset(actions)
        self._go.clear()
        self._install()

    def release(self) -> None:
        self._held = frozenset()
        self._go.set()

    def _install(self) -> None:
        # Setting an authorizer expires the cached statements, so it sees every next one.
        self._connection.set_authorizer(self._authorize)

    def _authorize(self, action: int, *_: Any) -> int:
        if action in self._held:
            self.reached.set()
            self._go.wait(30)
        return sqlite3.SQLITE_DENY if action in self._denied else sqlite3.SQLITE_OK


@contextlib.asynccontextmanager
async def server(
    path: Path, flush_interval: float = 0.05, **settings: Any
) -> AsyncIterator[tuple[DiscoveryServer, SqliteStore, httpx.AsyncClient]]:
    store = SqliteStore(path, flush_interval=flush_interval, write_timeout=0.5)
    async with (
        run_server(store=store, secret=SECRET, store_write_timeout=0.5, **settings) as running,
        httpx.AsyncClient(base_url=running.rest_url, timeout=30) as rest,
    ):
        yield running, store, rest


def stored(path: Path) -> list[tuple[str, float, str]]:
    """The rows of the file (another connection: what is committed), in registration order."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT instance_id, registered_at, status FROM instances ORDER BY seq")
        return [(str(i), float(at), str(status)) for i, at, status in rows]


def ids(path: Path) -> list[str]:
    return [row[0] for row in stored(path)]


async def register(rest: httpx.AsyncClient) -> None:
    answer = await rest.post("/v1/discovery/register", json=registration(), headers=AUTH)
    assert answer.status_code == 200, answer.text


async def listed(rest: httpx.AsyncClient) -> list[str]:
    answer = await rest.get("/v1/discovery/services")
    return [i["instance_id"] for i in answer.json()["services"].get("game", [])]


async def test_an_expiry_the_store_refused_is_written_once_it_can(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "registry.db"
    caplog.set_level(logging.WARNING, logger="discovery.store")
    async with server(path, registration_ttl=1.0) as (_, store, rest):
        faults = Faults(store)
        await register(rest)
        faults.deny(sqlite3.SQLITE_DELETE)
        await eventually(lambda: "expiries not written" in caplog.text)
        # Expired: gone from reads at once, but its delete was refused.
        assert await listed(rest) == []
        assert ids(path) == ["game-1"]
        faults.deny()
        # Written by the next flush, without waiting for a stop: a SIGKILL now loses nothing.
        await eventually(lambda: ids(path) == [])

    async with server(path) as (_, _, rest):
        assert await listed(rest) == []


async def test_a_registration_after_an_unwritten_expiry_replaces_the_expired_row(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "registry.db"
    caplog.set_level(logging.WARNING, logger="discovery.store")
    # No flush retries the expiry: the registration itself has to delete the expired row.
    async with server(path, flush_interval=3600, registration_ttl=1.0) as (_, store, rest):
        faults = Faults(store)
        first = await rest.post("/v1/discovery/register", json=registration(), headers=AUTH)
        expired_at = first.json()["instance"]["registered_at"]
        faults.deny(sqlite3.SQLITE_DELETE)
        await eventually(lambda: "expiries not written" in caplog.text)
        # Registering it again needs that delete: refused, and not applied.
        again = await rest.post("/v1/discovery/register", json=registration(), headers=AUTH)
        assert again.status_code == 503
        assert await listed(rest) == []
        faults.deny()
        other = registration(instance="game-2")
        assert (await rest.post("/v1/discovery/register", json=other, headers=AUTH)).is_success
        back = await rest.post("/v1/discovery/register", json=registration(), headers=AUTH)
        assert back.is_success
        registered_at = back.json()["instance"]["registered_at"]
        assert registered_at != expired_at
        assert ids(path) == ["game-2", "game-1"]  # a new registration: last in the order
    # The stop retried nothing that could take the new registration.
    async with server(path, registration_ttl=1.0) as (_, _, rest):
        records = (await rest.get("/v1/discovery/services/game")).json()["instances"]
        assert [(i["instance_id"], i["registered_at"]) for i in records] == [
            ("game-2", records[0]["registered_at"]),
            ("game-1", registered_at),
        ]


async def test_a_lapse_the_store_refused_is_written_once_it_can(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    async with server(path, heartbeat_interval=0.2) as (_, store, rest):
        faults = Faults(store)
        await register(rest)
        await eventually(lambda: stored(path)[0][2] == "healthy")
        faults.deny(sqlite3.SQLITE_UPDATE)

        async def lapsed() -> bool:
            answer = await rest.get("/v1/discovery/services/game/healthy")
            return not answer.json()["healthy_instances"]

        await eventually(lapsed)
        assert stored(path)[0][2] == "healthy"  # refused so far
        faults.deny()
        await eventually(lambda: stored(path)[0][2] == "unhealthy")


async def test_a_stalled_write_is_refused_in_time_and_the_registry_follows_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "registry.db"
    async with (
        server(path) as (running, store, rest),
        grpc.aio.insecure_channel(running.grpc_target) as channel,
    ):
        stub = pb_grpc.DiscoveryServiceStub(channel)
        faults = Faults(store)
        faults.hold(sqlite3.SQLITE_INSERT)
        try:
            # The writer takes this one and stalls inside its transaction ...
            stalled = asyncio.ensure_future(
                rest.post("/v1/discovery/register", json=registration(), headers=AUTH)
            )
            assert await asyncio.to_thread(faults.reached.wait, 30)
            # ... so this one waits in the queue behind it.
            request = pb.RegisterRequest(
                service_name="game", instance_id="queued", host="10.0.0.1", port=1
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Register(request, metadata=GRPC_AUTH, timeout=30)
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
            answer = await stalled
            assert answer.status_code == 503
            assert "did not answer within 0.5s" in answer.json()["detail"]
            assert await listed(rest) == []
        finally:
            faults.release()
        # The stalled transaction committed after all: the registry follows what is durable.
        # The queued one was given up before the writer took it: never written.
        await eventually(lambda: ids(path) == ["game-1"])
        await eventually(lambda: _listed_is(rest, ["game-1"]))
        next_one = registration(instance="game-3")
        assert (await rest.post("/v1/discovery/register", json=next_one, headers=AUTH)).is_success
        assert ids(path) == ["game-1", "game-3"]
        assert await listed(rest) == ["game-1", "game-3"]


async def _listed_is(rest: httpx.AsyncClient, expected: list[str]) -> bool:
    return await listed(rest) == expected


async def test_a_stop_while_the_disk_stalls_ends_in_time(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    store = SqliteStore(path, write_timeout=0.5)
    await store.open(lambda: 0)
    faults = Faults(store)
    try:
        await store.put(_instance("kept"))
        faults.hold(sqlite3.SQLITE_INSERT)
        stalled = asyncio.ensure_future(store.put(_instance("stalled")))
        assert await asyncio.to_thread(faults.reached.wait, 30)
        with pytest.raises(StoreUnavailable):  # queued behind it: given up in time
            await store.put(_instance("queued"))
        await asyncio.wait_for(store.close(), timeout=10)  # about 2 x 0.5 s
    finally:
        faults.release()
    await asyncio.wait_for(stalled, timeout=30)  # its commit lands once the disk is back
    assert ids(path) == ["kept", "stalled"]


def _instance(instance_id: str) -> Instance:
    made = Instance("game", instance_id, "10.0.0.1", 80, None, {}, 1000.0)
    made.published = made.snapshot()
    return made
