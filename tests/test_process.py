"""The process itself: console script, `python -m discovery`, signals, exit codes, log lines."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from collections.abc import AsyncIterator, Sequence

import grpc
import httpx
import pytest

from discovery.testing import ServerProcess
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc
from tests.conftest import AUTH, EOF, GRPC_AUTH, SECRET, registration

ENV = {"SERVICE_DISCOVERY_SECRET": SECRET}


async def start(
    command: Sequence[str] | None = None, wait: bool = True, **env: str
) -> ServerProcess:
    return await ServerProcess.start(env={**ENV, **env}, command=command, wait=wait)


@pytest.fixture
async def running() -> AsyncIterator[ServerProcess]:
    async with await start() as process:
        yield process


async def test_console_script_serves_both_protocols_and_exits_0_on_sigterm(
    running: ServerProcess,
) -> None:
    rest_url = running.rest_url
    async with httpx.AsyncClient(base_url=rest_url) as rest:
        response = await rest.post("/v1/discovery/register", json=registration(), headers=AUTH)
        assert response.status_code == 200
    async with grpc.aio.insecure_channel(running.grpc_target) as channel:
        reply = await pb_grpc.DiscoveryServiceStub(channel).Heartbeat(
            pb.HeartbeatRequest(service_name="game", instance_id="game-1"), metadata=GRPC_AUTH
        )
        assert reply.instance.instance_id == "game-1"
    assert await running.stop(within=8) == 0
    output = running.output
    assert output.count("REST listening on") == 1
    assert output.count("gRPC listening on") == 1
    assert "Traceback" not in output


async def test_python_m_discovery_exits_0_on_sigint() -> None:
    async with await start([sys.executable, "-m", "discovery"]) as process:
        async with httpx.AsyncClient() as client:
            health = await client.get(f"{process.rest_url}/health")
            assert health.status_code == 200
        assert await process.stop(signal.SIGINT, within=8) == 0


async def test_logged_ports_are_the_bound_ones(running: ServerProcess) -> None:
    for port in running.ports.values():
        assert port > 0
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    assert "SERVICE_DISCOVERY_SECRET" not in running.output  # a secret is set


async def test_without_a_secret_one_warning_says_writes_are_open() -> None:
    async with await start(SERVICE_DISCOVERY_SECRET="") as process:
        assert await process.stop() == 0
    warnings = [line for line in process.lines if "WARNING" in line and "SECRET" in line]
    assert len(warnings) == 1


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("HEALTH_CHECK_INTERVAL_SECONDS", "abc"),
        ("CRITICAL_LOAD_THRESHOLD", "1.2"),
        ("SERVICE_DISCOVERY_PORT", "70000"),
        ("SERVICE_DISCOVERY_GRPC_PORT", "-5"),
        ("LOG_LEVEL", "loud"),
    ],
)
async def test_a_bad_setting_stops_start_up_with_exit_2(variable: str, value: str) -> None:
    async with await start(wait=False, **{variable: value}) as process:
        assert await process.wait() == 2
    output = [line for line in process.lines if line.strip()]
    assert len(output) == 1
    assert variable in output[0]


@pytest.mark.parametrize("level", ["warning", "Error"])
async def test_log_level_is_case_insensitive_and_ports_are_still_announced(level: str) -> None:
    async with await start(LOG_LEVEL=level) as process:
        assert await process.stop() == 0
    announced = ("listening on", "Store: ")  # the ports and the store are always announced
    other_info = [
        line for line in process.lines if " INFO " in line and not any(a in line for a in announced)
    ]
    assert other_info == []
    assert sum("Store: memory" in line for line in process.lines) == 1


async def test_a_port_in_use_fails_clearly() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with await start(wait=False, SERVICE_DISCOVERY_PORT=str(port)) as process:
            code = await process.wait()
    assert code not in (0, 2)
    assert "Traceback" not in process.output
    assert any(str(port) in line or "in use" in line for line in process.lines)


async def test_sigterm_with_open_streams_ends_them_and_exits_0_promptly(
    running: ServerProcess,
) -> None:
    rest_url = running.rest_url
    async with (
        grpc.aio.insecure_channel(running.grpc_target) as channel,
        httpx.AsyncClient(base_url=rest_url, timeout=10) as rest,
        rest.stream("GET", "/v1/discovery/watch") as sse,
    ):
        stub = pb_grpc.DiscoveryServiceStub(channel)
        watch = stub.Watch(pb.WatchRequest())
        first = await watch.read()
        assert isinstance(first, pb.WatchResponse)
        assert first.reset
        lines = sse.aiter_lines()
        assert "RESET" in await anext(line async for line in lines if line.startswith("data:"))
        loop = asyncio.get_running_loop()
        started = loop.time()
        running.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(6):
            while (await watch.read()) is not EOF:
                pass
            assert await watch.code() == grpc.StatusCode.OK
            async for _ in lines:  # the SSE stream ends too
                pass
            assert await running.wait(within=6) == 0
        assert loop.time() - started < 5
