"""The SQLite store across restarts of the real server: fields, order, liveness, alerts,
deadlines, revisions and Watch resumes (SIGTERM, SIGINT and SIGKILL)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sqlite3
from pathlib import Path
from typing import Any

import grpc
import pytest

from discovery.client import Backoff, DiscoveryClient, ServiceWatcher
from discovery.testing import eventually
from discovery.v1 import discovery_pb2 as pb
from tests.conftest import AUTH, GRPC_AUTH, SECRET, registration
from tests.instances import fake_instances
from tests.store_processes import clients, records, server_on

VOLATILE = ("last_health_check",)


def stable(found: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Records without the probe time (probes go on after a restart)."""
    return {
        name: [{k: v for k, v in record.items() if k not in VOLATILE} for record in instances]
        for name, instances in found.items()
    }


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_graceful_stop_keeps_everything_exactly(tmp_path: Path, sig: int) -> None:
    path = tmp_path / "nested" / "registry.db"
    env = {"HEALTH_CHECK_INTERVAL_SECONDS": "0.5", "CRITICAL_LOAD_THRESHOLD": "0.8"}
    async with fake_instances() as fleet:
        fleet.answer("/health", 200, {"status": "UP", "load_percentage": 0.9})
        async with server_on(path, env) as first, clients(first) as (rest, stub):
            for n in range(3):
                body = registration(instance=f"beat-{n}", metadata={"n": str(n), "zone": "a"})
                answer = await rest.post("/v1/discovery/register", json=body, headers=AUTH)
                assert answer.status_code == 200
            await stub.Register(
                pb.RegisterRequest(
                    service_name="api",
                    instance_id="probed",
                    host="127.0.0.1",
                    port=fleet.port,
                    health_endpoint="/health",
                    metadata={"version": "2"},
                ),
                metadata=GRPC_AUTH,
            )
            beat = {"service_name": "game", "instance_id": "beat-1", "load_percentage": 0.42}
            assert (await rest.post("/v1/discovery/heartbeat", json=beat, headers=AUTH)).is_success
            answer = await rest.delete("/v1/discovery/unregister/game/beat-0", headers=AUTH)
            assert answer.status_code == 200

            async def critical() -> bool:
                found = (await rest.get("/v1/discovery/services/api")).json()["instances"]
                return bool(found[0]["critical_load"])

            await eventually(critical, within=10)
            before = await records(rest)
            alerts = (await rest.get("/v1/discovery/alerts")).json()
            last = await _revision(stub)
            assert await first.stop(sig) == 0
        assert path.exists()

        async with server_on(path, env) as second, clients(second) as (rest, stub):
            assert "Store: sqlite" in second.output
            assert f"{path} (3 instances restored)" in second.output
            after = await records(rest)
            assert stable(after) == stable(before)
            assert [i["instance_id"] for i in after["game"]] == ["beat-1", "beat-2"]
            assert (await rest.get("/v1/discovery/alerts")).json() == alerts
            # The probed instance is probed at once, not an interval later.
            checked = before["api"][0]["last_health_check"]

            async def probed() -> bool:
                found = (await rest.get("/v1/discovery/services/api")).json()["instances"]
                return bool(found[0]["last_health_check"] != checked)

            await eventually(probed, within=5)
            # Revisions go on growing.
            body = registration(instance="beat-9")
            answer = await rest.post("/v1/discovery/register", json=body, headers=AUTH)
            assert answer.status_code == 200
            assert await _revision(stub) > last
            assert await second.stop() == 0


async def _revision(stub: Any) -> int:
    """The current revision, from the first message of a Watch."""
    call = stub.Watch(pb.WatchRequest())
    try:
        async for message in call:
            return int(message.revision)
    finally:
        call.cancel()
    raise AssertionError("the watch ended without a message")


async def test_a_legacy_client_carries_on_across_restarts_longer_than_its_ttl(
    tmp_path: Path,
) -> None:
    # Registered once, then only heartbeats: each restart (down for longer than the TTL and the
    # heartbeat grace) leaves it registered and healthy, and its next heartbeat gets 200.
    path = tmp_path / "registry.db"
    # The TTL and grace restart when the server serves: they must leave the test time to connect
    # and ask even on a loaded machine (1.5 s did not, once), so 4 s each.
    env = {"SERVICE_REGISTRATION_TTL_SECONDS": "4", "SERVICE_HEARTBEAT_INTERVAL_SECONDS": "2"}
    beat = {"service_name": "legacy", "instance_id": "legacy-1"}
    async with server_on(path, env) as process, clients(process) as (rest, _):
        body = registration(service="legacy", instance="legacy-1")
        assert (await rest.post("/v1/discovery/register", json=body, headers=AUTH)).is_success
        assert (await rest.post("/v1/discovery/heartbeat", json=beat, headers=AUTH)).is_success
        await process.kill()
    for sig in (signal.SIGKILL, signal.SIGTERM):
        # Down for longer than the TTL: the restart must not expire or down it.
        down = await _wait(4.5)
        assert down >= 4.5
        async with server_on(path, env) as process, clients(process) as (rest, _):
            healthy = await rest.get("/v1/discovery/services/legacy/healthy")
            assert [i["instance_id"] for i in healthy.json()["healthy_instances"]] == ["legacy-1"]
            answer = await rest.post("/v1/discovery/heartbeat", json=beat, headers=AUTH)
            assert answer.status_code == 200, answer.text
            await process.stop(sig)


async def _wait(seconds: float) -> float:
    """Let `seconds` pass while no server runs (time itself is what is under test)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    await asyncio.sleep(seconds)
    return loop.time() - start


async def test_after_sigkill_revisions_grow_and_an_old_watch_resumes_with_a_reset(
    tmp_path: Path,
) -> None:
    path = tmp_path / "registry.db"
    async with server_on(path) as process, clients(process) as (rest, stub):
        for n in range(5):
            body = registration(instance=f"w-{n}")
            assert (await rest.post("/v1/discovery/register", json=body, headers=AUTH)).is_success
        old = await _revision(stub)
        await process.kill()
    async with server_on(path) as process, clients(process) as (rest, stub):
        body = registration(instance="w-new")
        assert (await rest.post("/v1/discovery/register", json=body, headers=AUTH)).is_success
        assert await _revision(stub) > old
        call = stub.Watch(pb.WatchRequest(start_revision=old))
        try:
            first = await _read(call)
            assert first.reset
            names = set()
            message = first
            while True:
                names |= {event.instance.instance_id for event in message.events}
                if message.synced:
                    break
                message = await _read(call)
            assert names == {f"w-{n}" for n in range(5)} | {"w-new"}
            assert message.revision > old
        finally:
            call.cancel()
        # A resume from a revision after the restart gets the changes, not a reset.
        now = await _revision(stub)
        answer = await rest.delete("/v1/discovery/unregister/game/w-0", headers=AUTH)
        assert answer.status_code == 200
        call = stub.Watch(pb.WatchRequest(start_revision=now))
        try:
            message = await _read(call)
            assert not message.reset
            assert [e.instance.instance_id for e in message.events] == ["w-0"]
            assert message.events[0].type == pb.EVENT_TYPE_DELETE
        finally:
            call.cancel()


async def _read(call: Any) -> pb.WatchResponse:
    message = await call.read()
    assert isinstance(message, pb.WatchResponse), message
    return message


async def test_grpc_and_rest_registrations_come_back_with_their_fields(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    async with server_on(path) as process, clients(process) as (rest, stub):
        answer = await stub.Register(
            pb.RegisterRequest(
                service_name="grpc-svc",
                instance_id="g-1",
                host="::1",
                port=9000,
                health_endpoint="",
                metadata={"k": "v" * 1024},
            ),
            metadata=GRPC_AUTH,
        )
        assert answer.instance.instance_id == "g-1"
        body = registration(service="rest-svc", instance="r-1", health_endpoint="/ready")
        assert (await rest.post("/v1/discovery/register", json=body, headers=AUTH)).is_success
        before = await records(rest)
        await process.kill()
    async with server_on(path) as process, clients(process) as (rest, stub):
        after = await records(rest)
        keys = ("service_name", "instance_id", "host", "port", "health_endpoint", "metadata")
        for name in ("grpc-svc", "rest-svc"):
            mine, theirs = before[name][0], after[name][0]
            assert {k: theirs[k] for k in (*keys, "registered_at")} == {
                k: mine[k] for k in (*keys, "registered_at")
            }
        assert after["grpc-svc"][0]["health_endpoint"] is None
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.GetService(pb.GetServiceRequest(service_name="nothing"))


def _stored_load(path: Path, instance_id: str) -> float | None:
    """The load the store file holds for an instance (read beside the running server)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        row = db.execute(
            "SELECT load_percentage FROM instances WHERE instance_id = ?", (instance_id,)
        ).fetchone()
    return None if row is None else float(row[0])


async def test_heartbeats_reach_the_file_within_a_second_and_survive_sigkill(
    tmp_path: Path,
) -> None:
    path = tmp_path / "registry.db"
    async with server_on(path) as process, clients(process) as (rest, _):
        body = registration(instance="loaded")
        assert (await rest.post("/v1/discovery/register", json=body, headers=AUTH)).is_success
        beat = {"service_name": "game", "instance_id": "loaded", "load_percentage": 0.55}
        assert (await rest.post("/v1/discovery/heartbeat", json=beat, headers=AUTH)).is_success
        took = await eventually(lambda: _stored_load(path, "loaded") == 0.55, within=5)
        assert took < 2.0, f"the heartbeat took {took:.2f}s to reach the file"
        before = (await records(rest))["game"][0]
        await process.kill()
    async with server_on(path) as process, clients(process) as (rest, _):
        after = (await records(rest))["game"][0]
        assert after["load_percentage"] == 0.55
        assert after["last_heartbeat"] == before["last_heartbeat"]
        assert after["status"] == before["status"] == "healthy"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_the_sdk_client_and_watcher_carry_on_across_a_sigkill_restart(
    tmp_path: Path,
) -> None:
    path = tmp_path / "registry.db"
    port = _free_port()
    env = {"SERVICE_DISCOVERY_GRPC_PORT": str(port)}
    target = f"127.0.0.1:{port}"
    backoff = Backoff(initial=0.05, maximum=0.5)
    async with (
        server_on(path, env) as first,
        DiscoveryClient(target, secret=SECRET, backoff=backoff, heartbeat_interval=0.1) as sdk,
        ServiceWatcher(target, ["game"], backoff=backoff) as watcher,
    ):
        await sdk.register("game", "sdk-1", "127.0.0.1", 9000, health_endpoint=None)
        await eventually(lambda: [i.instance_id for i in watcher.instances("game")] == ["sdk-1"])
        await first.kill()
        async with server_on(path, env) as second, clients(second) as (rest, _):
            assert "(1 instances restored)" in second.output
            restored = (await records(rest))["game"][0]["last_heartbeat"]

            async def beating() -> bool:
                found = (await records(rest)).get("game", [])
                return bool(found) and found[0]["last_heartbeat"] != restored

            await eventually(beating, within=10)  # the KeepAlive stream is back
            body = registration(instance="rest-1")
            answer = await rest.post("/v1/discovery/register", json=body, headers=AUTH)
            assert answer.status_code == 200
            await eventually(
                lambda: {i.instance_id for i in watcher.instances("game")} == {"sdk-1", "rest-1"},
                within=10,
            )
            healthy = (await rest.get("/v1/discovery/services/game/healthy")).json()
            assert {i["instance_id"] for i in healthy["healthy_instances"]} == {
                "sdk-1",
                "rest-1",
            }
            await sdk.close(unregister=False)
