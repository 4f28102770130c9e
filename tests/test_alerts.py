"""Critical-load alerts end to end: probes and heartbeats raise them, hysteresis holds them,
recovery, bad health and unregistering clear them; the webhook hears of each, and a dead one
changes nothing else."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import grpc
import httpx
import pytest

from discovery.core.model import Change
from discovery.testing import eventually
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc
from tests.conftest import AUTH, GRPC_AUTH, ServerFactory, register, registration
from tests.instances import (
    FakeInstances,
    closed_port,
    fake_instances,
    healthy_ids,
    record,
    serving,
)

FAST = {"health_check_interval": 0.2, "health_check_timeout": 0.5}
PAYLOAD_KEYS = {
    "event",
    "service_name",
    "instance_id",
    "load_percentage",
    "threshold",
    "since",
    "at",
}


@pytest.fixture
async def fleet() -> AsyncIterator[FakeInstances]:
    async with fake_instances() as running:
        yield running


@pytest.fixture
async def hook() -> AsyncIterator[FakeInstances]:
    async with fake_instances() as receiver:
        receiver.answer("/hook", 204)
        yield receiver


def load(fleet: FakeInstances, value: float, status: int = 200) -> None:
    fleet.answer("/health", status, {"status": "UP", "load_percentage": value})


async def alerts(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await client.get("/v1/discovery/alerts")
    assert response.status_code == 200
    found: list[dict[str, Any]] = response.json()["alerts"]
    return found


async def has_alerts(client: httpx.AsyncClient, count: int) -> bool:
    return len(await alerts(client)) == count


async def probes(fleet: FakeInstances, count: int) -> None:
    """Wait until `count` more probes have reached `fleet`."""
    target = len(fleet.hits) + count
    await eventually(lambda: _at_least(fleet, target))


async def _at_least(fleet: FakeInstances, hits: int) -> bool:
    return len(fleet.hits) >= hits


def webhook_events(hook: FakeInstances) -> list[dict[str, Any]]:
    return [json.loads(body) for _, body in hook.posts]


async def has_posts(hook: FakeInstances, count: int) -> bool:
    return len(hook.posts) >= count


def alert_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [
        (r.levelno, r.getMessage())
        for r in caplog.records
        if r.name == "discovery.alerts" and "Critical load" in r.getMessage()
    ]


async def test_raise_stay_in_the_band_and_clear(
    make_server: ServerFactory,
    fleet: FakeInstances,
    hook: FakeInstances,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "discovery")
    url = f"http://127.0.0.1:{hook.port}/hook"
    load(fleet, 0.5)
    async with serving(make_server, alert_webhook_url=url, **FAST) as (server, client):
        flags: list[bool] = []
        server.core.registry.subscribe(lambda c: _flag(flags, c))
        await register(client, instance="game-1", **fleet.at("/health"))
        await eventually(lambda: _record_is(client, "load_percentage", 0.5))
        assert await alerts(client) == []

        load(fleet, 0.85)
        await eventually(lambda: has_alerts(client, 1))
        [alert] = await alerts(client)
        assert alert["service_name"] == "game"
        assert alert["instance_id"] == "game-1"
        assert alert["load_percentage"] == 0.85
        assert alert["threshold"] == 0.8
        assert datetime.fromisoformat(alert["since"]).utcoffset() is not None
        found = await record(client, "game-1")
        assert found["critical_load"] is True
        assert found["status"] == "healthy"
        assert await healthy_ids(client) == ["game-1"]  # still serving

        load(fleet, 0.78)  # below the threshold, inside the hysteresis band
        await probes(fleet, 5)
        [alert] = await alerts(client)
        assert alert["load_percentage"] == 0.78
        assert (await record(client, "game-1"))["critical_load"] is True

        load(fleet, 0.7)
        await eventually(lambda: has_alerts(client, 0))
        assert (await record(client, "game-1"))["critical_load"] is False
        await probes(fleet, 3)
        await eventually(lambda: has_posts(hook, 2))

    assert alert_lines(caplog) == [
        (logging.WARNING, "Critical load: game:game-1 at 0.85 (threshold 0.80)"),
        (logging.INFO, "Critical load cleared: game:game-1 at 0.70"),
    ]
    raised, cleared = webhook_events(hook)
    assert [path for path, _ in hook.posts] == ["/hook", "/hook"]
    assert set(raised) == set(cleared) == PAYLOAD_KEYS
    assert (raised["event"], cleared["event"]) == ("alert.raised", "alert.cleared")
    assert (raised["load_percentage"], cleared["load_percentage"]) == (0.85, 0.7)
    assert raised["threshold"] == cleared["threshold"] == 0.8
    assert raised["since"] == cleared["since"] == alert["since"]
    for event in (raised, cleared):
        assert (event["service_name"], event["instance_id"]) == ("game", "game-1")
        assert datetime.fromisoformat(event["at"]).utcoffset() is not None
    assert datetime.fromisoformat(cleared["at"]) > datetime.fromisoformat(raised["at"])
    assert flags.count(True) >= 2  # the raise and the move inside the band, each a PUT
    assert flags[-1] is False


def _flag(flags: list[bool], change: Change) -> None:
    flags.append(change.instance.critical_load)


async def _record_is(client: httpx.AsyncClient, field: str, value: Any) -> bool:
    return bool((await record(client, "game-1"))[field] == value)


async def test_an_alert_clears_when_the_instance_turns_unhealthy(
    make_server: ServerFactory, fleet: FakeInstances, hook: FakeInstances
) -> None:
    url = f"http://127.0.0.1:{hook.port}/hook"
    load(fleet, 0.95)
    async with serving(make_server, alert_webhook_url=url, **FAST) as (_, client):
        await register(client, instance="game-1", **fleet.at("/health"))
        await eventually(lambda: has_alerts(client, 1))
        load(fleet, 0.1, status=503)  # a failing probe's load is not taken
        await eventually(lambda: has_alerts(client, 0))
        found = await record(client, "game-1")
        assert (found["status"], found["critical_load"]) == ("unhealthy", False)
        assert found["load_percentage"] == 0.95
        await eventually(lambda: has_posts(hook, 2))
    events = webhook_events(hook)
    assert [e["event"] for e in events] == ["alert.raised", "alert.cleared"]
    assert events[1]["load_percentage"] == 0.95


async def test_an_alert_clears_when_the_instance_goes(
    make_server: ServerFactory, fleet: FakeInstances, hook: FakeInstances
) -> None:
    url = f"http://127.0.0.1:{hook.port}/hook"
    load(fleet, 0.9)
    async with serving(make_server, alert_webhook_url=url, **FAST) as (_, client):
        await register(client, instance="game-1", **fleet.at("/health"))
        await eventually(lambda: has_alerts(client, 1))
        response = await client.delete("/v1/discovery/unregister/game/game-1", headers=AUTH)
        assert response.status_code == 200
        assert await alerts(client) == []
        await eventually(lambda: has_posts(hook, 2))
    assert [e["event"] for e in webhook_events(hook)] == ["alert.raised", "alert.cleared"]


async def test_pushed_load_raises_and_clears(make_server: ServerFactory) -> None:
    async with serving(make_server, **FAST) as (server, client):
        body = registration(instance="game-1", health_endpoint=None)
        assert (await client.post("/v1/discovery/register", json=body, headers=AUTH)).is_success
        beat = {"service_name": "game", "instance_id": "game-1", "load_percentage": 0.81}
        assert (await client.post("/v1/discovery/heartbeat", json=beat, headers=AUTH)).is_success
        assert [a["load_percentage"] for a in await alerts(client)] == [0.81]
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            stub = pb_grpc.DiscoveryServiceStub(channel)
            reply = await stub.ListAlerts(pb.ListAlertsRequest())
            assert [(a.instance_id, a.threshold) for a in reply.alerts] == [("game-1", 0.8)]
            request = pb.HeartbeatRequest(
                service_name="game", instance_id="game-1", load_percentage=0.76
            )
            await stub.Heartbeat(request, metadata=GRPC_AUTH)
            assert len(await alerts(client)) == 1
            request.load_percentage = 0.74
            await stub.Heartbeat(request, metadata=GRPC_AUTH)
            assert await alerts(client) == []
            assert (await stub.ListAlerts(pb.ListAlertsRequest())).alerts == []


@pytest.mark.parametrize("receiver", ["dead", "hung"])
async def test_a_dead_webhook_changes_nothing_else(
    make_server: ServerFactory, fleet: FakeInstances, hook: FakeInstances, receiver: str
) -> None:
    if receiver == "hung":
        hook.answer("/hook", hang=True)
        url = f"http://127.0.0.1:{hook.port}/hook"
    else:
        url = f"http://127.0.0.1:{closed_port()}/hook"
    load(fleet, 0.9)
    async with serving(make_server, alert_webhook_url=url, **FAST) as (server, client):
        for n in range(5):
            await register(client, instance=f"game-{n}", **fleet.at("/health"))
        await eventually(lambda: has_alerts(client, 5))
        load(fleet, 0.2)
        await eventually(lambda: has_alerts(client, 0))
        load(fleet, 0.9)
        await eventually(lambda: has_alerts(client, 5))
        # The API answers at once and probes keep their pace while the webhook fails.
        for _ in range(20):
            started = time.monotonic()
            assert len(await healthy_ids(client)) == 5
            assert time.monotonic() - started < 0.25
        hits = len(fleet.hits)
        await eventually(lambda: len(fleet.hits) - hits >= 5 * 3)  # not stalled by the hook
        assert server.core.webhook is not None
        assert server.core.webhook.delivered == 0
