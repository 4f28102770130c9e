"""KeepAlive: acks, clean detach, and breaks that turn instances unhealthy."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from discovery.core.model import HealthStatus, Registration
from discovery.server import DiscoveryServer
from discovery.testing import ServerProcess, eventually
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc
from tests.conftest import GRPC_AUTH, SECRET, ServerFactory, Stub, add
from tests.instances import fake_instances

KeepAliveCall = grpc.aio.StreamStreamCall[pb.KeepAliveRequest, pb.KeepAliveResponse]


def status(server: DiscoveryServer, instance: str) -> HealthStatus:
    return server.core.registry.require("game", instance).status


async def beat(
    call: KeepAliveCall, instance: str, load_percentage: float | None = None, detach: bool = False
) -> pb.KeepAliveResponse:
    request = pb.KeepAliveRequest(
        service_name="game", instance_id=instance, load_percentage=load_percentage, detach=detach
    )
    await call.write(request)
    ack = await asyncio.wait_for(call.read(), 5)
    assert isinstance(ack, pb.KeepAliveResponse)
    return ack


@pytest.fixture
async def keepalive(stub: Stub) -> AsyncIterator[KeepAliveCall]:
    call = stub.KeepAlive(None, metadata=GRPC_AUTH)
    yield call
    call.cancel()


async def test_acks_and_error_acks_keep_the_stream_open(
    server: DiscoveryServer, keepalive: KeepAliveCall
) -> None:
    await add(server, "game", "game-1")
    ack = await beat(keepalive, "game-1", load_percentage=0.4)
    assert (ack.code, ack.service_name, ack.instance_id) == (0, "game", "game-1")
    assert ack.instance.load_percentage == pytest.approx(0.4)
    assert ack.instance.HasField("last_heartbeat")
    missing = await beat(keepalive, "nobody")
    assert (missing.code, missing.HasField("instance")) == (5, False)
    assert "nobody" in missing.message
    invalid = await beat(keepalive, "game-1", load_percentage=1.5)
    assert invalid.code == 3
    assert "load_percentage" in invalid.message
    assert server.core.registry.require("game", "game-1").load_percentage == pytest.approx(0.4)
    bad_id = await beat(keepalive, "-bad id")  # as over REST and unary: INVALID_ARGUMENT
    assert (bad_id.code, "instance_id" in bad_id.message) == (3, True)
    again = await beat(keepalive, "game-1")  # still open after error acks
    assert again.code == 0


async def test_each_request_is_a_heartbeat(
    server: DiscoveryServer, keepalive: KeepAliveCall
) -> None:
    await add(server, "game", "game-1")
    before = server.core.registry.require("game", "game-1").last_heartbeat
    await beat(keepalive, "game-1")
    after = server.core.registry.require("game", "game-1").last_heartbeat
    assert after is not None
    assert before is None or after > before


@pytest.mark.parametrize("ending", ["cancel", "close without detach"])
async def test_a_break_turns_held_instances_unhealthy_at_once(
    server: DiscoveryServer, keepalive: KeepAliveCall, ending: str
) -> None:
    await add(server, "game", "game-1")
    await add(server, "game", "game-2")
    await add(server, "game", "game-3")  # never sent on the stream: not held
    await beat(keepalive, "game-1")
    await beat(keepalive, "game-2")
    if ending == "cancel":
        keepalive.cancel()
    else:
        await keepalive.done_writing()
        assert await asyncio.wait_for(keepalive.code(), 5) == grpc.StatusCode.OK
    await eventually(lambda: status(server, "game-1") is HealthStatus.UNHEALTHY)
    assert status(server, "game-2") is HealthStatus.UNHEALTHY
    assert status(server, "game-3") is HealthStatus.HEALTHY


async def test_detach_then_close_leaves_instances_as_they_are(
    server: DiscoveryServer, keepalive: KeepAliveCall
) -> None:
    for instance in ("game-1", "game-2", "marker"):
        await add(server, "game", instance)
        await beat(keepalive, instance)
    assert (await beat(keepalive, "game-1", detach=True)).code == 0
    assert (await beat(keepalive, "game-2", detach=True)).code == 0
    await keepalive.done_writing()
    assert await asyncio.wait_for(keepalive.code(), 5) == grpc.StatusCode.OK
    # The marker, still held, is severed by the same close that would have severed the others.
    await eventually(lambda: status(server, "marker") is HealthStatus.UNHEALTHY)
    assert status(server, "game-1") is HealthStatus.HEALTHY
    assert status(server, "game-2") is HealthStatus.HEALTHY


async def test_a_severed_instance_comes_back_with_its_next_heartbeat(
    server: DiscoveryServer, stub: Stub, keepalive: KeepAliveCall
) -> None:
    await add(server, "game", "game-1")
    await beat(keepalive, "game-1")
    keepalive.cancel()
    await eventually(lambda: status(server, "game-1") is HealthStatus.UNHEALTHY)
    await stub.Heartbeat(
        pb.HeartbeatRequest(service_name="game", instance_id="game-1"), metadata=GRPC_AUTH
    )
    assert status(server, "game-1") is HealthStatus.HEALTHY


async def test_another_open_stream_keeps_a_shared_instance_up(
    server: DiscoveryServer, stub: Stub, keepalive: KeepAliveCall
) -> None:
    await add(server, "game", "game-1")
    await add(server, "game", "marker")
    newer = stub.KeepAlive(None, metadata=GRPC_AUTH)  # e.g. a client that reconnected
    await beat(keepalive, "game-1")
    await beat(keepalive, "marker")  # held by the first stream only
    await beat(newer, "game-1")
    keepalive.cancel()
    await eventually(lambda: status(server, "marker") is HealthStatus.UNHEALTHY)
    assert status(server, "game-1") is HealthStatus.HEALTHY
    newer.cancel()
    await eventually(lambda: status(server, "game-1") is HealthStatus.UNHEALTHY)


async def test_keepalive_needs_credentials(stub: Stub) -> None:
    # The stream is refused on its headers, before any request is read. No request is written:
    # a grpc.aio client whose write fails because the status already came reports INTERNAL
    # instead of that status (grpc/grpc#36066), which is the client library's doing, not ours.
    call = stub.KeepAlive(None, metadata=(("authorization", "Bearer wrong"),))
    assert await asyncio.wait_for(call.code(), 5) == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call.read()
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_shutdown_ends_keepalive_streams_promptly(make_server: ServerFactory) -> None:
    server_context = make_server()
    server = await server_context.__aenter__()
    try:
        await add(server, "game", "game-1")
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            call = pb_grpc.DiscoveryServiceStub(channel).KeepAlive(None, metadata=GRPC_AUTH)
            await beat(call, "game-1")
            started = time.monotonic()
            await server_context.__aexit__(None, None, None)
            assert time.monotonic() - started < 2
            assert await asyncio.wait_for(call.code(), 2) == grpc.StatusCode.UNAVAILABLE
    finally:
        await server_context.__aexit__(None, None, None)


CLIENT = textwrap.dedent(
    """
    import asyncio, sys
    import grpc
    from discovery.v1 import discovery_pb2 as pb, discovery_pb2_grpc as pb_grpc

    async def main(target, secret):
        async with grpc.aio.insecure_channel(target) as channel:
            call = pb_grpc.DiscoveryServiceStub(channel).KeepAlive(
                metadata=(("authorization", "Bearer " + secret),))
            for name in ("game-1", "game-2"):
                await call.write(pb.KeepAliveRequest(service_name="game", instance_id=name))
                assert (await call.read()).code == 0
            print("ready", file=sys.stderr, flush=True)
            await asyncio.sleep(60)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


async def test_a_killed_client_process_makes_its_instances_unhealthy_within_a_second(
    server: DiscoveryServer,
) -> None:
    await add(server, "game", "game-1")
    async with fake_instances() as fleet:
        fleet.answer("/health", 200, {"status": "UP"})  # probes alone keep game-2 healthy
        await server.core.register(
            Registration("game", "game-2", "127.0.0.1", fleet.port, "/health")
        )
        await eventually(lambda: status(server, "game-2") is HealthStatus.HEALTHY)
        client = await ServerProcess.start(
            command=[sys.executable, "-c", CLIENT, server.grpc_target, SECRET],
            env={"PYTHONPATH": os.getcwd()},
            wait=False,
        )
        async with client:
            await client.wait_for_line("ready", within=20)
            assert status(server, "game-1") is HealthStatus.HEALTHY
            await client.kill()
            took = await eventually(
                lambda: all(
                    status(server, i) is HealthStatus.UNHEALTHY for i in ("game-1", "game-2")
                ),
                within=1.0,
                every=0.005,
            )
            assert took < 1.0
