"""Connection hygiene, against the console script: idle and slowloris connections are cut off
within their timeouts on both ports, and a flood of idle connections against a low descriptor
limit leaves existing clients, /health and gRPC health working."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from discovery.testing import SCRIPT, ServerProcess, eventually
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc
from tests.conftest import read_message

SHORT = {"HEADER_TIMEOUT_SECONDS": "1", "IDLE_TIMEOUT_SECONDS": "1"}
#: How late a timeout may act on a loaded machine, and still count as "within" it.
SLACK = 4.0


async def closed_after(reader: asyncio.StreamReader, within: float) -> float:
    """Seconds until the server closes the connection (reads until EOF, discarding data)."""
    started = time.monotonic()
    async with asyncio.timeout(within):
        while await reader.read(65536):
            pass
    return time.monotonic() - started


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def test_silent_and_idle_rest_connections_are_closed() -> None:
    async with await ServerProcess.start(env=SHORT) as server:
        async with connection(server.rest_port) as (reader, _):
            assert await closed_after(reader, 1 + SLACK) >= 0.5  # never sent a byte
        async with connection(server.rest_port) as (reader, writer):
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200")
            await closed_after(reader, 1 + SLACK)  # kept alive, then idle
        assert await server.stop() == 0


async def test_slowloris_is_cut_off_while_still_sending() -> None:
    async with await ServerProcess.start(env=SHORT) as server:
        async with connection(server.rest_port) as (reader, writer):
            request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
            started = time.monotonic()

            async def dribble() -> None:
                with contextlib.suppress(OSError):
                    for byte in request:
                        writer.write(bytes([byte]))
                        await writer.drain()
                        await asyncio.sleep(0.1)

            sender = asyncio.create_task(dribble())
            try:
                await closed_after(reader, 1 + SLACK)
            finally:
                sender.cancel()
            assert time.monotonic() - started < 1 + SLACK
            assert not sender.done() or sender.cancelled()  # it was still sending
        async with httpx.AsyncClient(base_url=server.rest_url) as client:
            assert (await client.get("/health")).status_code == 200


async def test_grpc_silent_and_idle_connections_are_closed() -> None:
    env = {**SHORT, "GRPC_MAX_CONNECTION_IDLE_SECONDS": "1"}
    async with await ServerProcess.start(env=env) as server:
        async with connection(server.grpc_port) as (reader, _):
            await closed_after(reader, 1 + SLACK)  # no HTTP/2 preface: handshake timeout
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            stub = pb_grpc.DiscoveryServiceStub(channel)
            await stub.ListServices(pb.ListServicesRequest(), timeout=10)
            assert channel.get_state() is grpc.ChannelConnectivity.READY

            def idle() -> bool:
                return channel.get_state() is not grpc.ChannelConnectivity.READY

            await eventually(idle, within=1 + SLACK)  # the server said GOAWAY and closed
            await stub.ListServices(pb.ListServicesRequest(), timeout=10)  # and reconnects


async def test_a_watch_stream_outlives_the_idle_timeout() -> None:
    env = {**SHORT, "GRPC_MAX_CONNECTION_IDLE_SECONDS": "0.5"}
    async with (
        await ServerProcess.start(env=env) as server,
        grpc.aio.insecure_channel(server.grpc_target) as channel,
    ):
        stub = pb_grpc.DiscoveryServiceStub(channel)
        call = stub.Watch(pb.WatchRequest(), timeout=30)
        assert (await read_message(call)).synced
        # An open call is not idle: progress messages keep coming on the same stream.
        progress = await asyncio.wait_for(read_message(call), 15)
        assert progress.synced
        assert not progress.events
        call.cancel()


FLOOD = 300


async def test_a_flood_of_idle_connections_at_a_low_descriptor_limit() -> None:
    env = {"HEADER_TIMEOUT_SECONDS": "60", "HEALTH_CHECK_MAX_CONCURRENCY": "10"}
    command = ["prlimit", "--nofile=256:256", str(SCRIPT)]
    async with await ServerProcess.start(env=env, command=command) as server:
        async with (
            httpx.AsyncClient(base_url=server.rest_url) as rest,
            grpc.aio.insecure_channel(server.grpc_target) as channel,
        ):
            health = health_pb2_grpc.HealthStub(channel)
            stub = pb_grpc.DiscoveryServiceStub(channel)
            watch = stub.Watch(pb.WatchRequest())
            assert (await read_message(watch)).synced
            assert (await rest.get("/health")).status_code == 200
            flood: list[asyncio.StreamWriter] = []
            try:
                for port in (server.rest_port, server.grpc_port):
                    for _ in range(FLOOD):
                        with contextlib.suppress(OSError):
                            flood.append((await asyncio.open_connection("127.0.0.1", port))[1])
                # Existing clients, /health (over a new connection too) and gRPC health work.
                assert (await rest.get("/health")).status_code == 200
                async with httpx.AsyncClient(base_url=server.rest_url) as fresh:
                    assert (await fresh.get("/health")).status_code == 200
                check = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
                assert check.status == health_pb2.HealthCheckResponse.SERVING
                request = pb.RegisterRequest(
                    service_name="svc", instance_id="a", host="10.0.0.1", port=80
                )
                await stub.Register(request, timeout=10)
                message = await asyncio.wait_for(read_message(watch), 10)
                assert [e.instance.instance_id for e in message.events] == ["a"]
            finally:
                for writer in flood:
                    writer.close()
            watch.cancel()
        # Once the flood is gone, new gRPC connections are taken again.
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            check = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            assert check.status == health_pb2.HealthCheckResponse.SERVING
        assert await server.stop() == 0
    log = server.output
    assert "Descriptor limit 256" in log
    assert "File descriptor limit reached" not in log
    assert "Too many open files" not in log
    assert "Traceback" not in log
