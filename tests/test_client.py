"""The client SDK against a real in-process server: keepalive, re-registration, the watcher's view,
restarts, and the blocking facades."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc
import pytest

from discovery.client import (
    Backoff,
    DiscoveryClient,
    InstanceChange,
    NoInstanceAvailable,
    ServiceWatcher,
    SyncDiscoveryClient,
    SyncServiceWatcher,
)
from discovery.core.facade import DiscoveryCore
from discovery.core.model import HealthStatus
from discovery.rpc.servicer import Context, DiscoveryServicer, build_server
from discovery.server import DiscoveryServer
from discovery.testing import eventually, test_settings
from discovery.v1 import discovery_pb2 as pb
from tests.conftest import SECRET, ServerFactory, add


def fast() -> Backoff:
    return Backoff(initial=0.02, maximum=0.2)


def client_for(server: DiscoveryServer, **options: Any) -> DiscoveryClient:
    return DiscoveryClient(
        server.grpc_target, secret=SECRET, backoff=fast(), heartbeat_interval=0.05, **options
    )


@pytest.fixture
async def watcher(server: DiscoveryServer) -> AsyncIterator[ServiceWatcher]:
    async with ServiceWatcher(server.grpc_target, ["game"], backoff=fast()) as watcher:
        yield watcher


async def test_client_keeps_alive_reports_load_and_unregisters_on_close(
    server: DiscoveryServer,
) -> None:
    registry = server.core.registry
    async with client_for(server) as client:
        instance = await client.register("game", "game-1", "10.0.0.5", 8080, health_endpoint=None)
        assert (instance.address, instance.healthy) == ("10.0.0.5:8080", True)
        await asyncio.wait_for(client.connected.wait(), 5)
        first = registry.require("game", "game-1").last_heartbeat
        await eventually(lambda: registry.require("game", "game-1").last_heartbeat != first)
        client.set_load("game", "game-1", 0.7)
        await eventually(lambda: registry.require("game", "game-1").load_percentage == 0.7)
    assert registry.get("game", "game-1") is None


async def test_close_without_unregister_detaches_and_leaves_instances_up(
    server: DiscoveryServer,
) -> None:
    client = client_for(server)
    await client.register("game", "game-1", "10.0.0.5", 8080, health_endpoint=None)
    await asyncio.wait_for(client.connected.wait(), 5)
    # close() returns once the server ended the stream, that is after it handled its end.
    await client.close(unregister=False)
    assert server.core.registry.require("game", "game-1").status is HealthStatus.HEALTHY


async def test_client_registers_again_what_the_server_forgot(server: DiscoveryServer) -> None:
    async with client_for(server) as client:
        await client.register("game", "game-1", "10.0.0.5", 8080, health_endpoint=None)
        await asyncio.wait_for(client.connected.wait(), 5)
        await server.core.unregister("game", "game-1")
        await eventually(lambda: server.core.registry.get("game", "game-1") is not None)


async def test_a_refused_registration_leaves_the_stream_and_its_other_instances_alone(
    make_server: ServerFactory,
) -> None:
    async with make_server(max_instances=2) as server, client_for(server) as client:
        registry = server.core.registry
        for instance in ("game-1", "game-2"):
            await client.register("game", instance, "10.0.0.5", 8080, health_endpoint=None)
        await asyncio.wait_for(client.connected.wait(), 5)
        await server.core.unregister("game", "game-1")
        # The limit is reached: game-1 cannot come back.
        await add(server, "other", "other-1")
        beaten: list[float | None] = []
        for _ in range(3):  # rounds of heartbeats, each with a refused re-registration
            beaten.append(registry.require("game", "game-2").last_heartbeat)
            await eventually(
                lambda: registry.require("game", "game-2").last_heartbeat != beaten[-1]
            )
        # A broken stream would have turned game-2 unhealthy at once.
        assert registry.require("game", "game-2").status is HealthStatus.HEALTHY
        assert registry.get("game", "game-1") is None
        await server.core.unregister("other", "other-1")
        await eventually(lambda: registry.get("game", "game-1") is not None)


class _NoKeepAlive(DiscoveryServicer):
    async def KeepAlive(  # type: ignore[override]
        self, request_iterator: AsyncIterator[pb.KeepAliveRequest], context: Context
    ) -> AsyncIterator[pb.KeepAliveResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no KeepAlive here")
        yield pb.KeepAliveResponse()


async def test_client_falls_back_to_unary_heartbeats() -> None:
    core = DiscoveryCore(test_settings())
    server, _ = build_server(core, _NoKeepAlive(core))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with DiscoveryClient(
            f"127.0.0.1:{port}", backoff=fast(), heartbeat_interval=0.05
        ) as client:
            await client.register("game", "game-1", "10.0.0.5", 8080, health_endpoint=None)
            client.set_load("game", "game-1", 0.25)
            await eventually(
                lambda: core.registry.require("game", "game-1").load_percentage == 0.25
            )
            await asyncio.wait_for(client.connected.wait(), 5)
        assert core.registry.get("game", "game-1") is None
    finally:
        await server.stop(None)


async def test_watcher_view_pick_and_changes(
    server: DiscoveryServer, watcher: ServiceWatcher
) -> None:
    assert watcher.instances("game") == []
    with pytest.raises(NoInstanceAvailable):
        watcher.pick("game")
    changes = watcher.changes()
    next_change = asyncio.ensure_future(anext(changes))
    await asyncio.sleep(0)
    for n in range(3):
        await add(server, "game", f"game-{n}")
    await add(server, "chat", "chat-1")  # not watched
    change = await asyncio.wait_for(next_change, 5)
    assert (change.type, change.instance.instance_id) == ("PUT", "game-0")
    await eventually(lambda: len(watcher.instances("game")) == 3)
    assert watcher.instances() == watcher.instances("game")
    picks = [watcher.pick("game").instance_id for _ in range(6)]
    assert picks == ["game-0", "game-1", "game-2"] * 2
    server.core.heartbeat("game", "game-0", 0.9)
    server.core.heartbeat("game", "game-2", 0.9)
    await eventually(lambda: sum(i.load_percentage for i in watcher.instances("game")) > 1.7)
    assert {watcher.pick("game", "least_load").instance_id for _ in range(4)} == {"game-1"}
    assert watcher.pick("game", "random").instance_id in {"game-0", "game-1", "game-2"}
    server.core.registry.sever([("game", "game-1")])  # unhealthy: out of a healthy-only view
    await eventually(lambda: len(watcher.instances("game")) == 2)
    assert [(c.type, c.instance.instance_id) for c in [await anext(changes) for _ in range(5)]][
        -1
    ] == ("DELETE", "game-1")
    assert isinstance(changes, AsyncGenerator)  # what changes() is; it is typed an iterator
    await changes.aclose()


async def test_watcher_resumes_after_a_broken_stream_without_reset(
    server: DiscoveryServer,
) -> None:
    seen: list[InstanceChange] = []
    async with ServiceWatcher(
        server.grpc_target, ["game"], on_change=seen.append, backoff=fast()
    ) as watcher:
        await add(server, "game", "game-1")
        await eventually(lambda: len(watcher.instances("game")) == 1)
        for stream in server.core.watch_hub.watchers():
            stream.end()  # the stream ends; the client reconnects from its revision
        await add(server, "game", "game-2")
        await eventually(lambda: len(watcher.instances("game")) == 2)
        assert watcher.reconnects >= 1
        assert watcher.resets == 1
        assert [(c.type, c.instance.instance_id) for c in seen] == [
            ("PUT", "game-1"),
            ("PUT", "game-2"),
        ]


async def test_a_service_and_a_gateway_survive_a_server_restart(
    make_server: ServerFactory,
) -> None:
    context = make_server()
    server = await context.__aenter__()
    ports = {"grpc_port": server.grpc_port, "rest_port": server.rest_port}
    target = server.grpc_target
    service = DiscoveryClient(target, secret=SECRET, backoff=fast(), heartbeat_interval=0.05)
    gateway = ServiceWatcher(target, ["game"], backoff=fast())
    try:
        await service.register("game", "game-1", "10.0.0.5", 8080, health_endpoint=None)
        await service.register("game", "game-2", "10.0.0.6", 8080, health_endpoint=None)
        await gateway.__aenter__()
        await eventually(lambda: len(gateway.instances("game")) == 2)
        await context.__aexit__(None, None, None)
        context = make_server(**ports)
        server = await context.__aenter__()
        await add(server, "game", "game-3")  # registered meanwhile by someone else
        await eventually(lambda: len(server.core.registry) == 3)
        expected = {i.instance_id: i.revision for i in server.core.registry.all_instances()}
        await eventually(
            lambda: {i.instance_id: i.revision for i in gateway.instances("game")} == expected
        )
        assert gateway.resets == 2
        await server.core.unregister("game", "game-3")
        await eventually(lambda: len(gateway.instances("game")) == 2)
        await service.close()
        await eventually(lambda: gateway.instances("game") == [])
    finally:
        await gateway.close()
        await service.close()
        await context.__aexit__(None, None, None)


async def test_blocking_facades(server: DiscoveryServer) -> None:
    def scenario() -> tuple[str, list[str], int]:
        with SyncServiceWatcher(server.grpc_target, ["game"], backoff=fast()) as watcher:
            with SyncDiscoveryClient(server.grpc_target, secret=SECRET, backoff=fast()) as client:
                client.register("game", "game-1", "10.0.0.5", 8080, health_endpoint=None)
                deadline = time.monotonic() + 5
                while not watcher.instances("game") and time.monotonic() < deadline:
                    time.sleep(0.01)
                picked = watcher.pick("game").address
                client.set_load("game", "game-1", 0.5)
            deadline = time.monotonic() + 5
            while watcher.instances("game") and time.monotonic() < deadline:
                time.sleep(0.01)
            return picked, [i.instance_id for i in watcher.instances("game")], watcher.revision

    picked, left, revision = await asyncio.to_thread(scenario)
    assert picked == "10.0.0.5:8080"
    assert left == []
    assert revision > 0


async def test_changes_end_when_the_watcher_closes(server: DiscoveryServer) -> None:
    watcher = ServiceWatcher(server.grpc_target, ["game"], backoff=fast())
    await watcher.wait_synced()
    changes = watcher.changes()
    pending = asyncio.ensure_future(anext(changes))
    await asyncio.sleep(0.01)
    await watcher.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(pending, 2)
    assert [change async for change in watcher.changes()] == []  # closed: ends at once


async def test_blocking_client_set_load_reaches_the_server_and_close_is_idempotent(
    server: DiscoveryServer,
) -> None:
    registry = server.core.registry

    def scenario() -> None:
        client = SyncDiscoveryClient(
            server.grpc_target, secret=SECRET, backoff=fast(), heartbeat_interval=0.05
        )
        client.register("game", "game-1", "10.0.0.5", 8080, health_endpoint=None)
        with pytest.raises(KeyError):
            client.set_load("game", "not-registered", 0.5)
        client.set_load("game", "game-1", 0.5)
        deadline = time.monotonic() + 5
        while registry.require("game", "game-1").load_percentage != 0.5:
            assert time.monotonic() < deadline, "load not reported in time"
            time.sleep(0.01)
        client.close()
        client.close()

    await asyncio.to_thread(scenario)
    assert registry.get("game", "game-1") is None


def test_backoff_past_its_cap_stays_there() -> None:
    backoff = Backoff(initial=0.1, maximum=5.0)
    delays = [backoff.next() for _ in range(5000)]  # over an hour of failed reconnects
    assert all(2.5 <= d <= 5.0 for d in delays[-100:])


def test_backoff_is_jittered_exponential_and_capped() -> None:
    backoff = Backoff(initial=0.1, maximum=1.0, rng=random.Random(7))
    delays = [backoff.next() for _ in range(8)]
    ceilings = [min(1.0, 0.1 * 2**n) for n in range(8)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len(set(delays)) == len(delays)
    backoff.reset()
    assert backoff.next() <= 0.1
