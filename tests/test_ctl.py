"""`discoveryctl` as a user runs it: the installed console script against a server process."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from discovery.testing import ServerProcess
from tests.conftest import SECRET
from tests.ctl import ctl, start_watch
from tests.instances import closed_port

WRITE = {"SERVICE_DISCOVERY_SECRET": SECRET}
HEADERS = ["SERVICE", "INSTANCE", "ADDRESS", "STATUS", "LOAD", "HEARTBEAT", "PROBED"]


@pytest.fixture
async def server() -> AsyncIterator[ServerProcess]:
    env = {"SERVICE_DISCOVERY_STORE": "memory", "SERVICE_DISCOVERY_SECRET": SECRET}
    async with await ServerProcess.start(env=env) as process:
        yield process


async def rest(server: ServerProcess, path: str) -> Any:
    async with httpx.AsyncClient(base_url=server.rest_url, timeout=5) as client:
        return (await client.get(path)).json()


async def test_json_output_is_the_rest_shapes(server: ServerProcess) -> None:
    at = ["--server", server.grpc_target]
    registered = await ctl(
        *at, "register", "game", "game-1", "127.0.0.1", "8080",
        "--no-health-endpoint", "--meta", "version=1.2", "--meta", "zone=a=b", "--json",
        env=WRITE,
    )  # fmt: skip
    assert registered.code == 0, registered.err
    answer = registered.json()
    assert answer["message"] == "Service game:game-1 registered successfully"
    assert answer["instance"]["metadata"] == {"version": "1.2", "zone": "a=b"}
    assert answer["instance"]["health_endpoint"] is None
    assert answer["heartbeat_interval_seconds"] == 60
    beat = await ctl(*at, "heartbeat", "game", "game-1", "--load", "0.95", "--json", env=WRITE)
    assert beat.code == 0, beat.err
    assert beat.json()["instance"]["critical_load"] is True

    services = await ctl(*at, "services", "--json")
    assert services.json() == await rest(server, "/v1/discovery/services")
    got = await ctl(*at, "get", "game", "--json")
    assert got.json() == await rest(server, "/v1/discovery/services/game")
    alerts = await ctl(*at, "alerts", "--json")
    assert alerts.json() == await rest(server, "/v1/discovery/alerts")
    assert [a["instance_id"] for a in alerts.json()["alerts"]] == ["game-1"]

    gone = await ctl(*at, "unregister", "game", "game-1", "--json", env=WRITE)
    assert gone.json() == {"success": True, "message": "Service unregistered successfully"}
    assert (await ctl(*at, "services", "--json")).json() == {"services": {}}


async def test_tables_for_people_fit_the_terminal(server: ServerProcess) -> None:
    at = ["--server", server.grpc_target]
    long_name = "a-service-with-a-rather-long-name-for-a-narrow-terminal"
    for instance in ("first-instance-of-many", "second"):
        done = await ctl(*at, "register", long_name, instance, "10.0.0.5", "80", env=WRITE)
        assert done.code == 0, done.err
        assert f"Registered {long_name}/{instance} at 10.0.0.5:80" in done.out
    for width in (60, 100):
        shown = await ctl(*at, "services", env={"COLUMNS": str(width)})
        lines = shown.out.splitlines()
        columns = lines[0].split()
        assert columns == HEADERS[: len(columns)]
        assert len(columns) >= (7 if width >= 100 else 4)
        assert len(lines) == 3
        assert all(len(line) <= width for line in lines), shown.out
    wide = await ctl(*at, "get", long_name, env={"COLUMNS": "200"})
    assert long_name in wide.out
    assert "10.0.0.5:80" in wide.out
    assert (await ctl(*at, "alerts")).out.strip() == "No open alerts."
    assert (await ctl(*at, "health")).out.strip() == "SERVING"


async def test_options_before_or_after_the_subcommand(server: ServerProcess) -> None:
    before = await ctl("--json", "--server", server.grpc_target, "services")
    after = await ctl("services", "--server", server.grpc_target, "--json")
    from_env = await ctl("services", "--json", env={"DISCOVERY_SERVER": server.grpc_target})
    assert before.code == after.code == from_env.code == 0
    assert before.json() == after.json() == from_env.json() == {"services": {}}


async def test_exit_status_1_when_the_server_refuses(server: ServerProcess) -> None:
    at = ["--server", server.grpc_target]
    no_secret = await ctl(*at, "register", "game", "game-1", "127.0.0.1", "8080")
    assert no_secret.code == 1
    assert "UNAUTHENTICATED" in no_secret.err
    unknown = await ctl(*at, "heartbeat", "game", "nope", env=WRITE)
    assert (unknown.code, unknown.out) == (1, "")
    assert "NOT_FOUND" in unknown.err
    invalid = await ctl(*at, "register", "_bad", "x", "127.0.0.1", "8080", env=WRITE)
    assert invalid.code == 1
    assert "service_name" in invalid.err
    bad_load = await ctl(*at, "heartbeat", "game", "game-1", "--load", "7", env=WRITE)
    assert bad_load.code == 1
    assert (await ctl(*at, "get", "nothing")).code == 1
    assert (await ctl(*at, "unregister", "game", "nope", env=WRITE)).code == 1


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["frobnicate"],
        ["get"],
        ["register", "game", "game-1", "127.0.0.1", "not-a-port"],
        ["register", "game", "game-1", "h", "1", "--meta", "no-equals"],
        ["register", "game", "game-1", "h", "1", "--health-endpoint", "/h", "--no-health-endpoint"],
        ["heartbeat", "game", "game-1", "--load", "lots"],
        ["services", "--cert", "/nonexistent/client.crt"],
        ["services", "--ca", "/nonexistent/ca.crt"],
    ],
)
async def test_exit_status_2_on_a_usage_error(args: list[str]) -> None:
    result = await ctl(*args)
    assert result.code == 2, result
    assert result.err.strip()


async def test_help_and_version() -> None:
    helped = await ctl("--help")
    assert helped.code == 0
    for command in ("services", "get", "watch", "register", "heartbeat", "unregister", "alerts"):
        assert command in helped.out
    version = await ctl("--version")
    assert (version.code, version.out.split()) == (0, ["discoveryctl", "1.0.0"])


@pytest.mark.parametrize("command", ["services", "watch", "health"])
async def test_exit_status_3_when_the_server_is_unreachable(command: str) -> None:
    result = await ctl("--server", f"127.0.0.1:{closed_port()}", "--timeout", "3", command)
    assert result.code == 3
    assert "cannot reach" in result.err


async def read_json_line(stream: asyncio.StreamReader) -> dict[str, Any]:
    line = await asyncio.wait_for(stream.readline(), 20)
    assert line, "discoveryctl watch ended"
    data: dict[str, Any] = json.loads(line)
    return data


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
async def test_watch_follows_and_resumes_after_a_server_restart(
    tmp_path: Path, stop: signal.Signals
) -> None:
    env = {
        "SERVICE_DISCOVERY_STORE": f"sqlite:{tmp_path / 'registry.db'}",
        "SERVICE_DISCOVERY_SECRET": SECRET,
    }
    first = await ServerProcess.start(env=env)
    target = first.grpc_target
    ports = {
        "SERVICE_DISCOVERY_PORT": str(first.rest_port),
        "SERVICE_DISCOVERY_GRPC_PORT": str(first.grpc_port),
    }
    watcher = await start_watch("game", "--json", "--server", target)
    assert watcher.stdout is not None
    try:
        assert (await read_json_line(watcher.stdout))["type"] == "RESET"
        assert (await read_json_line(watcher.stdout))["type"] == "SYNCED"
        register = ["--server", target, "register", "game"]
        await ctl(*register, "game-1", "127.0.0.1", "8080", "--no-health-endpoint", env=WRITE)
        put = await read_json_line(watcher.stdout)
        assert (put["type"], put["instance"]["instance_id"]) == ("PUT", "game-1")
        assert put["revision"] > 0

        assert await first.stop(stop) == (0 if stop == signal.SIGTERM else -signal.SIGKILL)
        async with await ServerProcess.start(env={**env, **ports}) as second:
            await ctl(*register, "game-2", "127.0.0.1", "8081", "--no-health-endpoint", env=WRITE)
            seen: list[dict[str, Any]] = []
            while not any(e.get("instance", {}).get("instance_id") == "game-2" for e in seen):
                seen.append(await read_json_line(watcher.stdout))
            game_2 = seen[-1]
            assert (game_2["type"], game_2["revision"] > put["revision"]) == ("PUT", True)
            if not any(e["type"] == "RESET" for e in seen):  # resumed: nothing repeated
                assert [e["instance"]["instance_id"] for e in seen] == ["game-2"]
            watcher.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(watcher.wait(), 10) == 0
            assert watcher.stderr is not None
            assert b"reconnecting" in await watcher.stderr.read()
            assert await second.stop() == 0
    finally:
        if watcher.returncode is None:
            watcher.kill()
            await watcher.wait()
        async with first:
            pass


async def test_watch_prints_one_line_per_event(server: ServerProcess) -> None:
    watcher = await start_watch("--server", server.grpc_target, "--healthy")
    assert watcher.stdout is not None
    try:
        assert "RESET" in (await asyncio.wait_for(watcher.stdout.readline(), 20)).decode()
        assert "SYNCED" in (await asyncio.wait_for(watcher.stdout.readline(), 20)).decode()
        at = ["--server", server.grpc_target]
        await ctl(
            *at, "register", "game", "g-1", "127.0.0.1", "9", "--no-health-endpoint", env=WRITE
        )
        line = (await asyncio.wait_for(watcher.stdout.readline(), 20)).decode()
        assert line.split()[1:5] == ["PUT", "game/g-1", "127.0.0.1:9", "healthy"]
        await ctl(*at, "unregister", "game", "g-1", env=WRITE)
        line = (await asyncio.wait_for(watcher.stdout.readline(), 20)).decode()
        assert line.split()[1:3] == ["DELETE", "game/g-1"]
        watcher.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(watcher.wait(), 10) == 0
    finally:
        if watcher.returncode is None:
            watcher.kill()
            await watcher.wait()
