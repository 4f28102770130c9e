"""Watch over gRPC (snapshot, resume, progress, filters), on a real in-process server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from discovery.server import DiscoveryServer
from discovery.testing import eventually
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc
from tests.conftest import GRPC_AUTH, ServerFactory, Stub, add

WatchCall = grpc.aio.UnaryStreamCall[pb.WatchRequest, pb.WatchResponse]
PUT, DELETE = pb.EVENT_TYPE_PUT, pb.EVENT_TYPE_DELETE


async def read(call: WatchCall, within: float = 5) -> pb.WatchResponse:
    message = await asyncio.wait_for(call.read(), within)
    assert isinstance(message, pb.WatchResponse), f"stream ended: {await call.code()}"
    return message


async def read_snapshot(call: WatchCall) -> list[pb.WatchResponse]:
    messages = [await read(call)]
    while not messages[-1].synced:
        messages.append(await read(call))
    return messages


def ids(message: pb.WatchResponse) -> list[tuple[int, str]]:
    return [(e.type, e.instance.instance_id) for e in message.events]


@pytest.fixture
async def channel(server: DiscoveryServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        yield channel


async def test_snapshot_then_live_events(server: DiscoveryServer, stub: Stub) -> None:
    await add(server, "game", "game-1")
    await add(server, "game", "game-2", metadata={"zone": "eu"})
    call = stub.Watch(pb.WatchRequest())  # reads need no credentials
    snapshot = await read(call)
    registry = server.core.registry
    assert snapshot.reset
    assert snapshot.synced
    assert snapshot.revision == registry.revision
    assert ids(snapshot) == [(PUT, "game-1"), (PUT, "game-2")]
    assert [e.revision for e in snapshot.events] == [
        registry.require("game", "game-1").revision,
        registry.require("game", "game-2").revision,
    ]
    assert dict(snapshot.events[1].instance.metadata) == {"zone": "eu"}
    assert snapshot.events[0].instance.status == pb.HEALTH_STATUS_HEALTHY
    await stub.Register(
        pb.RegisterRequest(
            service_name="game", instance_id="game-3", host="::1", port=9, health_endpoint=""
        ),
        metadata=GRPC_AUTH,
    )
    live = await read(call)
    assert not live.reset
    assert live.synced
    assert ids(live) == [(PUT, "game-3")]
    assert live.revision == live.events[0].revision == registry.revision
    await stub.Unregister(
        pb.UnregisterRequest(service_name="game", instance_id="game-1"), metadata=GRPC_AUTH
    )
    assert ids(await read(call)) == [(DELETE, "game-1")]
    call.cancel()


async def test_headers_arrive_at_once_on_a_quiet_stream(
    server: DiscoveryServer, stub: Stub
) -> None:
    call = stub.Watch(pb.WatchRequest(start_revision=server.core.registry.revision))
    assert await asyncio.wait_for(call.initial_metadata(), 2) is not None
    call.cancel()


async def test_a_large_snapshot_comes_in_chunks(server: DiscoveryServer, stub: Stub) -> None:
    for n in range(1_500):
        await add(server, "game", f"game-{n}", port=1 + n)
    await add(server, "chat", "chat-1")
    call = stub.Watch(pb.WatchRequest(service_names=["game"]))
    messages = await read_snapshot(call)
    assert len(messages) > 1
    assert [m.reset for m in messages] == [True] + [False] * (len(messages) - 1)
    assert [m.synced for m in messages] == [False] * (len(messages) - 1) + [True]
    assert {m.revision for m in messages} == {server.core.registry.revision}
    names = [e.instance.instance_id for m in messages for e in m.events]
    assert sorted(names) == sorted(f"game-{n}" for n in range(1_500))
    call.cancel()


async def test_every_change_once_in_revision_order(server: DiscoveryServer, stub: Stub) -> None:
    await add(server, "game", "game-1")
    call = stub.Watch(pb.WatchRequest())
    seen = (await read(call)).revision
    start = seen
    for n in range(300):
        await add(server, "game", f"game-{n % 7}", port=1000 + n)  # a move: always a change
        if n % 50 == 0:
            await asyncio.sleep(0)
    revisions: list[int] = []
    while seen < server.core.registry.revision:
        message = await read(call)
        assert message.synced
        assert not message.reset
        assert message.revision == message.events[-1].revision
        revisions.extend(e.revision for e in message.events)
        seen = message.revision
    assert revisions == list(range(start + 1, seen + 1))
    call.cancel()


async def test_healthy_only_sees_leaving_as_delete_and_coming_back_as_put(
    server: DiscoveryServer, stub: Stub
) -> None:
    await add(server, "game", "game-1")
    call = stub.Watch(pb.WatchRequest(healthy_only=True))
    assert ids(await read(call)) == [(PUT, "game-1")]
    server.core.registry.sever([("game", "game-1")])
    message = await read(call)
    assert ids(message) == [(DELETE, "game-1")]
    assert message.events[0].instance.status == pb.HEALTH_STATUS_UNHEALTHY
    await stub.Heartbeat(
        pb.HeartbeatRequest(service_name="game", instance_id="game-1"), metadata=GRPC_AUTH
    )
    assert ids(await read(call)) == [(PUT, "game-1")]
    call.cancel()


async def test_resume_sends_the_missed_changes_without_reset(
    server: DiscoveryServer, stub: Stub
) -> None:
    await add(server, "game", "game-1")
    first = stub.Watch(pb.WatchRequest())
    last = (await read(first)).revision
    first.cancel()
    await add(server, "game", "game-2")
    await server.core.unregister("game", "game-1")
    resumed = stub.Watch(pb.WatchRequest(start_revision=last))
    message = await read(resumed)
    assert not message.reset
    events = list(message.events)
    while len(events) < 2:
        events.extend((await read(resumed)).events)
    assert [(e.type, e.instance.instance_id) for e in events] == [
        (PUT, "game-2"),
        (DELETE, "game-1"),
    ]
    assert [e.revision for e in events] == [last + 1, last + 2]
    resumed.cancel()


@pytest.mark.parametrize("where", ["history gone", "ahead"])
async def test_resume_resets_when_the_server_cannot_serve_it(
    make_server: ServerFactory, where: str
) -> None:
    async with make_server(watch_history_size=3) as server:
        await add(server, "game", "game-1")
        start = server.core.registry.revision
        if where == "history gone":
            for n in range(5):
                await add(server, "game", f"game-{n + 2}")
        else:
            start += 10
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            stub = pb_grpc.DiscoveryServiceStub(channel)
            messages = await read_snapshot(stub.Watch(pb.WatchRequest(start_revision=start)))
        assert messages[0].reset
        assert messages[-1].revision == server.core.registry.revision
        assert len([e for m in messages for e in m.events]) == len(server.core.registry)


async def test_resume_from_before_a_restart_resets(make_server: ServerFactory) -> None:
    async with make_server() as server:
        await add(server, "game", "game-1")
        before = server.core.registry.revision
        ports = {"grpc_port": server.grpc_port, "rest_port": server.rest_port}
    async with make_server(**ports) as restarted:
        assert restarted.core.registry.revision > before  # never goes back across restarts
        await add(restarted, "game", "game-2")
        async with grpc.aio.insecure_channel(restarted.grpc_target) as channel:
            stub = pb_grpc.DiscoveryServiceStub(channel)
            message = await read(stub.Watch(pb.WatchRequest(start_revision=before)))
        assert message.reset
        assert ids(message) == [(PUT, "game-2")]


async def test_progress_on_a_quiet_stream(make_server: ServerFactory) -> None:
    async with make_server(watch_progress_interval=0.2) as server:
        await add(server, "game", "game-1")
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            call = pb_grpc.DiscoveryServiceStub(channel).Watch(
                pb.WatchRequest(service_names=["game"])
            )
            await read(call)
            await add(server, "chat", "chat-1")  # not for this watcher, but the revision moves
            started = time.monotonic()
            progress = await read(call, within=2)
            assert time.monotonic() - started < 1
            assert list(progress.events) == []
            assert progress.synced
            assert not progress.reset
            assert progress.revision == server.core.registry.revision
            call.cancel()


async def test_a_stuck_watcher_never_holds_up_the_others(make_server: ServerFactory) -> None:
    async with make_server(watch_max_backlog=50) as server:
        hub = server.core.watch_hub
        # No flow-control window growth: a client that stops reading stalls the server's writes.
        options = [("grpc.http2.bdp_probe", 0)]
        async with grpc.aio.insecure_channel(server.grpc_target, options=options) as channel:
            stub = pb_grpc.DiscoveryServiceStub(channel)
            stuck = stub.Watch(pb.WatchRequest())
            await read(stuck)  # then never reads while thousands of changes happen
            reader = stub.Watch(pb.WatchRequest())
            seen = (await read(reader)).revision
            start, most = seen, 0
            revisions: list[int] = []
            padding = {"padding": "x" * 1000}
            for n in range(3_000):
                await add(server, "game", f"game-{n % 100}", port=1 + n, metadata=padding)
                most = max([most, *(w.backlog for w in hub.watchers())])
                if n % 20 == 0:
                    while seen < server.core.registry.revision:
                        message = await read(reader)
                        revisions.extend(e.revision for e in message.events)
                        seen = message.revision
            while seen < server.core.registry.revision:
                message = await read(reader)
                revisions.extend(e.revision for e in message.events)
                seen = message.revision
            assert revisions == list(range(start + 1, seen + 1))
            assert most <= 50
            # the stuck one fell behind: its backlog is gone and it owes a fresh snapshot
            assert sorted(w.behind for w in hub.watchers()) == [False, True]
            view: dict[str, int] = {}
            while True:  # once it reads again it catches up through a reset snapshot
                message = await read(stuck)
                if message.reset:
                    view = {}
                for event in message.events:
                    if event.type == PUT:
                        view[event.instance.instance_id] = event.revision
                    else:
                        view.pop(event.instance.instance_id, None)
                if message.synced and message.revision == server.core.registry.revision:
                    break
            expected = {i.instance_id: i.revision for i in server.core.registry.all_instances()}
            assert view == expected


async def test_shutdown_ends_every_stream_with_status_ok(make_server: ServerFactory) -> None:
    server_context = make_server()
    server = await server_context.__aenter__()
    try:
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            stub = pb_grpc.DiscoveryServiceStub(channel)
            calls = [stub.Watch(pb.WatchRequest(healthy_only=bool(n % 2))) for n in range(5)]
            for call in calls:
                await read(call)
            started = time.monotonic()
            await server_context.__aexit__(None, None, None)
            assert time.monotonic() - started < 2
            for call in calls:
                assert await asyncio.wait_for(call.code(), 2) == grpc.StatusCode.OK
    finally:
        await server_context.__aexit__(None, None, None)


async def test_bad_service_name_is_invalid_argument(stub: Stub) -> None:
    call = stub.Watch(pb.WatchRequest(service_names=["game", "no spaces"]))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "service_names" in (caught.value.details() or "")


async def test_a_cancelled_stream_leaves_the_hub(server: DiscoveryServer, stub: Stub) -> None:
    calls = [stub.Watch(pb.WatchRequest(service_names=["game"])) for _ in range(3)]
    for call in calls:
        await read(call)
    assert len(server.core.watch_hub) == 3
    for call in calls:
        call.cancel()
    await eventually(lambda: len(server.core.watch_hub) == 0)  # the server notices at once
