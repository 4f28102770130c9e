"""The process itself: console script, `python -m discovery`, signals, exit codes, log lines."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import pytest

from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc
from tests.conftest import AUTH, GRPC_AUTH, SECRET, registration

SCRIPT = Path(sys.executable).with_name("service-discovery")
LISTENING = re.compile(r"(REST|gRPC) listening on (\S+):(\d+)")


@dataclass
class Process:
    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)

    async def read_until_listening(self, within: float = 15) -> None:
        async with asyncio.timeout(within):
            while len(self.ports) < 2:
                line = await self._line()
                if not line:
                    raise AssertionError("exited before listening:\n" + "".join(self.lines))
                if match := LISTENING.search(line):
                    self.ports[match[1]] = int(match[3])

    async def _line(self) -> str:
        assert self.proc.stderr is not None
        line = (await self.proc.stderr.readline()).decode()
        self.lines.append(line)
        return line

    async def finish(self, within: float = 10) -> int:
        async with asyncio.timeout(within):
            while await self._line():
                pass
            return await self.proc.wait()


async def start(command: Sequence[str], **env: str) -> Process:
    environment = {
        **os.environ,
        "SERVICE_DISCOVERY_HOST": "127.0.0.1",
        "SERVICE_DISCOVERY_PORT": "0",
        "SERVICE_DISCOVERY_GRPC_PORT": "0",
        "SERVICE_DISCOVERY_SECRET": SECRET,
        "SERVICE_DISCOVERY_STORE": "memory",
        **env,
    }
    proc = await asyncio.create_subprocess_exec(
        *command, env=environment, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    return Process(proc)


@pytest.fixture
async def running() -> AsyncIterator[Process]:
    process = await start([str(SCRIPT)])
    try:
        await process.read_until_listening()
        yield process
    finally:
        if process.proc.returncode is None:
            process.proc.kill()
            await process.proc.wait()


async def test_console_script_serves_both_protocols_and_exits_0_on_sigterm(
    running: Process,
) -> None:
    rest_url = f"http://127.0.0.1:{running.ports['REST']}"
    async with httpx.AsyncClient(base_url=rest_url) as rest:
        response = await rest.post("/v1/discovery/register", json=registration(), headers=AUTH)
        assert response.status_code == 200
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.ports['gRPC']}") as channel:
        reply = await pb_grpc.DiscoveryServiceStub(channel).Heartbeat(
            pb.HeartbeatRequest(service_name="game", instance_id="game-1"), metadata=GRPC_AUTH
        )
        assert reply.instance.instance_id == "game-1"
    running.proc.send_signal(signal.SIGTERM)
    assert await running.finish(within=8) == 0
    output = "".join(running.lines)
    assert output.count("REST listening on") == 1
    assert output.count("gRPC listening on") == 1
    assert "Traceback" not in output


async def test_python_m_discovery_exits_0_on_sigint() -> None:
    process = await start([sys.executable, "-m", "discovery"])
    await process.read_until_listening()
    async with httpx.AsyncClient() as client:
        health = await client.get(f"http://127.0.0.1:{process.ports['REST']}/health")
        assert health.status_code == 200
    process.proc.send_signal(signal.SIGINT)
    assert await process.finish(within=8) == 0


async def test_logged_ports_are_the_bound_ones(running: Process) -> None:
    for port in running.ports.values():
        assert port > 0
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    assert "SERVICE_DISCOVERY_SECRET" not in "".join(running.lines)  # a secret is set


async def test_without_a_secret_one_warning_says_writes_are_open() -> None:
    process = await start([str(SCRIPT)], SERVICE_DISCOVERY_SECRET="")
    await process.read_until_listening()
    process.proc.send_signal(signal.SIGTERM)
    assert await process.finish() == 0
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
    process = await start([str(SCRIPT)], **{variable: value})
    code = await process.finish()
    assert code == 2
    output = [line for line in process.lines if line.strip()]
    assert len(output) == 1
    assert variable in output[0]


@pytest.mark.parametrize("level", ["warning", "Error"])
async def test_log_level_is_case_insensitive_and_ports_are_still_announced(level: str) -> None:
    process = await start([str(SCRIPT)], LOG_LEVEL=level)
    await process.read_until_listening()
    process.proc.send_signal(signal.SIGTERM)
    assert await process.finish() == 0
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
        process = await start([str(SCRIPT)], SERVICE_DISCOVERY_PORT=str(port))
        code = await process.finish()
    assert code not in (0, 2)
    assert "Traceback" not in "".join(process.lines)
    assert any(str(port) in line or "in use" in line for line in process.lines)


async def test_sigterm_with_open_streams_ends_them_and_exits_0_promptly(running: Process) -> None:
    rest_url = f"http://127.0.0.1:{running.ports['REST']}"
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{running.ports['gRPC']}") as channel,
        httpx.AsyncClient(base_url=rest_url, timeout=10) as rest,
        rest.stream("GET", "/v1/discovery/watch") as sse,
    ):
        stub = pb_grpc.DiscoveryServiceStub(channel)
        watch = stub.Watch(pb.WatchRequest())
        assert (await watch.read()).reset
        lines = sse.aiter_lines()
        assert "RESET" in await anext(line async for line in lines if line.startswith("data:"))
        loop = asyncio.get_running_loop()
        started = loop.time()
        running.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(6):
            while (await watch.read()) is not grpc.aio.EOF:
                pass
            assert await watch.code() == grpc.StatusCode.OK
            async for _ in lines:  # the SSE stream ends too
                pass
            assert await running.finish(within=6) == 0
        assert loop.time() - started < 5
