"""Probes against real HTTP servers on loopback: the prober alone, then the whole server."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from discovery.core.health.probe import HttpProber, ProbeTarget
from discovery.testing import eventually
from tests.conftest import AUTH, ServerFactory, register, registration
from tests.instances import (
    FakeInstances,
    closed_port,
    fake_instances,
    has_healthy,
    healthy_ids,
    ipv6_available,
    record,
    serving,
    status_is,
)


@pytest.fixture
async def fleet() -> AsyncIterator[FakeInstances]:
    async with fake_instances() as running:
        yield running


@pytest.fixture
async def prober() -> AsyncIterator[HttpProber]:
    async with HttpProber(timeout=0.5, max_connections=10) as running:
        yield running


def at(fleet: FakeInstances, path: str) -> ProbeTarget:
    return ProbeTarget(fleet.host, fleet.port, path)


# -- the prober alone -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "passed"),
    [
        (200, "OK", True),
        (204, b"", True),
        (200, {"status": "UP"}, True),
        (200, {"status": "UP", "components": {"db": {"status": "UP"}}}, True),
        (200, {"status": "DOWN"}, False),
        (200, {"status": "unhealthy", "load_percentage": 0.2}, False),
        (503, {"status": "UP"}, False),
        (500, "oops", False),
        (404, "", False),
    ],
)
async def test_answers(
    fleet: FakeInstances, prober: HttpProber, status: int, body: Any, passed: bool
) -> None:
    fleet.answer("/health", status, body)
    result = await prober.probe(at(fleet, "/health"))
    assert result.passed is passed
    assert f"HTTP {status}" in result.reason


async def test_load_from_the_body(fleet: FakeInstances, prober: HttpProber) -> None:
    fleet.answer("/health", 200, {"status": "UP", "load_percentage": 0.42})
    assert (await prober.probe(at(fleet, "/health"))).load == 0.42


@pytest.mark.parametrize(
    "raw", [b'"high"', b"1.5", b"-0.1", b"NaN", b"Infinity", b"true", b"null", b"[0.5]"]
)
async def test_invalid_loads(fleet: FakeInstances, prober: HttpProber, raw: bytes) -> None:
    fleet.answer("/health", 200, b'{"status": "UP", "load_percentage": ' + raw + b"}")
    result = await prober.probe(at(fleet, "/health"))
    assert result.passed
    assert result.load is None
    assert result.bad_load


async def test_a_hung_instance_fails_at_the_timeout(
    fleet: FakeInstances, prober: HttpProber
) -> None:
    fleet.answer("/health", hang=True)
    started = time.monotonic()
    result = await prober.probe(at(fleet, "/health"))
    assert not result.passed
    assert result.timed_out
    assert "timed out" in result.reason
    assert 0.4 <= time.monotonic() - started < 1.5


async def test_a_dripping_body_fails_at_the_timeout(
    fleet: FakeInstances, prober: HttpProber
) -> None:
    # Every read gets a byte in time, so only a deadline on the whole probe stops it.
    fleet.answer("/health", drip=0.05)
    started = time.monotonic()
    result = await prober.probe(at(fleet, "/health"))
    assert not result.passed
    assert result.timed_out
    assert time.monotonic() - started < 1.5


async def test_a_slow_answer_within_the_timeout_passes(
    fleet: FakeInstances, prober: HttpProber
) -> None:
    fleet.answer("/health", 200, "OK", delay=0.25)
    assert (await prober.probe(at(fleet, "/health"))).passed


async def test_a_closed_port_fails_at_once(prober: HttpProber) -> None:
    started = time.monotonic()
    result = await prober.probe(ProbeTarget("127.0.0.1", closed_port(), "/health"))
    assert not result.passed
    assert not result.timed_out
    assert "timed out" not in result.reason
    assert time.monotonic() - started < 0.4


async def test_redirects_are_not_followed(fleet: FakeInstances, prober: HttpProber) -> None:
    fleet.answer("/health", 302, headers={"Location": "/elsewhere"})
    fleet.answer("/elsewhere", 200, {"status": "UP"})
    result = await prober.probe(at(fleet, "/health"))
    assert not result.passed
    assert "HTTP 302" in result.reason
    assert fleet.count("/elsewhere") == 0


async def test_an_endless_body_is_cut_at_64_kib(fleet: FakeInstances, prober: HttpProber) -> None:
    fleet.answer("/health", endless=True)
    started = time.monotonic()
    result = await prober.probe(at(fleet, "/health"))
    assert result.passed
    assert time.monotonic() - started < 0.4


async def test_a_large_json_body_is_judged_on_its_first_64_kib(
    fleet: FakeInstances, prober: HttpProber
) -> None:
    fleet.answer("/small", 200, {"status": "down", "pad": "x" * 60_000})
    fleet.answer("/large", 200, {"status": "down", "pad": "x" * 200_000})
    assert not (await prober.probe(at(fleet, "/small"))).passed
    # Cut short, the body is no JSON document any more: a 2xx with a body that says nothing.
    assert (await prober.probe(at(fleet, "/large"))).passed


async def test_connections_are_reused(fleet: FakeInstances, prober: HttpProber) -> None:
    fleet.answer("/health", 200, {"status": "UP"})
    for _ in range(5):
        assert (await prober.probe(at(fleet, "/health"))).passed
    assert fleet.connections == 1


@pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback on this machine")
async def test_ipv6_host(prober: HttpProber) -> None:
    async with fake_instances("::1") as fleet:
        fleet.answer("/health", 200, "OK")
        assert (await prober.probe(ProbeTarget("::1", fleet.port, "/health"))).passed
        assert fleet.count("/health") == 1


# -- through the whole server -----------------------------------------------------------------


async def test_a_new_instance_is_healthy_within_a_second(
    make_server: ServerFactory, fleet: FakeInstances
) -> None:
    fleet.answer("/health", 200, {"status": "UP", "load_percentage": 0.25})
    # A 30 s interval: only the immediate probe can make it healthy this soon.
    async with serving(make_server, health_check_interval=30) as (_, client):
        await register(client, instance="game-1", **fleet.at("/health"))
        took = await eventually(lambda: has_healthy(client, "game-1"), within=1.0)
        assert took < 1.0
        found = await record(client, "game-1")
        assert found["load_percentage"] == 0.25
        assert found["last_health_check"] is not None


async def test_a_failure_is_rechecked_within_a_second(
    make_server: ServerFactory, fleet: FakeInstances
) -> None:
    fleet.answer("/health", 200, "OK")
    fleet.answer("/down", 503, "")
    async with serving(make_server, health_check_interval=2, health_check_timeout=0.5) as (
        _,
        client,
    ):
        await register(client, instance="game-1", **fleet.at("/health"))
        await register(client, instance="game-2", **fleet.at("/down"))
        await eventually(lambda: has_healthy(client, "game-1"))
        await eventually(lambda: status_is(client, "game-2", "unhealthy"))
        assert await healthy_ids(client) == ["game-1"]
        fleet.answer("/health", 503, "")
        failed_before = len(fleet.times("/health"))
        await eventually(lambda: status_is(client, "game-1", "unhealthy"), within=5.0)
        times = fleet.times("/health")[failed_before:]
        # Two failures (the threshold), the second about a second after the first,
        # not a whole interval later.
        assert len(times) == 2
        assert 0.8 <= times[1] - times[0] <= 1.5
        assert await healthy_ids(client) == []


async def test_hung_instances_never_delay_the_others(
    make_server: ServerFactory, fleet: FakeInstances
) -> None:
    for n in range(3):
        fleet.answer(f"/hung-{n}", hang=True)
    for n in range(4):
        fleet.answer(f"/ok-{n}", 200, "OK")
    settings = {
        "health_check_interval": 0.2,
        "health_check_timeout": 1.5,
        "health_check_max_concurrency": 4,
    }
    async with serving(make_server, **settings) as (_, client):
        for n in range(3):
            await register(client, instance=f"hung-{n}", **fleet.at(f"/hung-{n}"))
        for n in range(4):
            await register(client, instance=f"ok-{n}", **fleet.at(f"/ok-{n}"))
        # Three slots are held by hung probes for 1.5 s each; the fourth keeps the rest
        # on their 0.2 s interval: 7 probes each take 1.4 s, not the 10 s of a blocked pool.
        await eventually(
            lambda: all(len(fleet.times(f"/ok-{n}")) >= 7 for n in range(4)), within=5.0
        )
        assert sorted(await healthy_ids(client)) == [f"ok-{n}" for n in range(4)]
        for name in [f"hung-{n}" for n in range(3)]:
            await eventually(lambda: status_is(client, name, "unhealthy"))  # noqa: B023  # awaited here


async def test_loads_from_probes(
    make_server: ServerFactory, fleet: FakeInstances, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "discovery")
    fleet.answer("/health", 200, {"status": "UP", "load_percentage": 0.4})
    async with serving(make_server, health_check_interval=0.2, health_check_timeout=0.5) as (
        _,
        client,
    ):
        await register(client, instance="game-1", **fleet.at("/health"))
        await eventually(lambda: _load_is(client, "game-1", 0.4))
        fleet.answer("/health", 200, {"status": "UP", "load_percentage": "high"})
        count = len(fleet.times("/health"))
        await eventually(lambda: _hits_above(fleet, "/health", count + 5))
        assert (await record(client, "game-1"))["load_percentage"] == 0.4
        fleet.answer("/health", 503, {"load_percentage": 0.0})
        await eventually(lambda: status_is(client, "game-1", "unhealthy"))
        assert (await record(client, "game-1"))["load_percentage"] == 0.4
    unusable = [r for r in caplog.records if "unusable load_percentage" in r.getMessage()]
    assert len(unusable) == 1
    assert "'high'" in unusable[0].getMessage()


async def _load_is(client: httpx.AsyncClient, instance_id: str, load: float) -> bool:
    return bool((await record(client, instance_id))["load_percentage"] == load)


async def _hits_above(fleet: FakeInstances, path: str, count: int) -> bool:
    return len(fleet.times(path)) >= count


async def test_a_moved_instance_is_probed_at_once(
    make_server: ServerFactory, fleet: FakeInstances
) -> None:
    fleet.answer("/health", 200, "OK")
    async with (
        fake_instances() as other,
        serving(make_server, health_check_interval=30) as (_, client),
    ):
        other.answer("/health", 503, "")
        await register(client, instance="game-1", **fleet.at("/health"))
        await eventually(lambda: has_healthy(client, "game-1"))
        await register(client, instance="game-1", **other.at("/health"))
        await eventually(lambda: status_is(client, "game-1", "unhealthy"), within=1.0)
        # Back at the first address, with the same endpoint: probed at once again.
        await register(client, instance="game-1", **fleet.at("/health"))
        await eventually(lambda: has_healthy(client, "game-1"), within=1.0)
        # The same address again keeps the health it has, with no new probe.
        hits = len(fleet.times("/health"))
        await register(client, instance="game-1", **fleet.at("/health"))
        assert await healthy_ids(client) == ["game-1"]
        # A new instance is probed at once: once its probe is seen, one for game-1 would be too.
        fleet.answer("/marker", 200, "OK")
        await register(client, instance="marker", **fleet.at("/marker"))
        await eventually(lambda: fleet.count("/marker") == 1)
        assert len(fleet.times("/health")) == hits


async def test_heartbeat_only_instances_are_not_probed(
    make_server: ServerFactory, fleet: FakeInstances
) -> None:
    async with serving(make_server, health_check_interval=0.2) as (_, client):
        body = registration(instance="game-1", port=fleet.port, health_endpoint=None)
        await client.post("/v1/discovery/register", json=body, headers=AUTH)
        # A probed instance registered after it, seen probed twice: rounds went by.
        fleet.answer("/marker", 200, "OK")
        await register(client, instance="marker", **fleet.at("/marker"))
        await eventually(lambda: fleet.count("/marker") >= 2)
        assert {path for _, path in fleet.hits} == {"/marker"}
        assert sorted(await healthy_ids(client)) == ["game-1", "marker"]


async def test_cookies_are_neither_kept_nor_sent(fleet: FakeInstances, prober: HttpProber) -> None:
    fleet.answer("/a", 200, "OK", headers={"Set-Cookie": "session=1; Path=/"})
    fleet.answer("/b", 200, "OK")
    assert (await prober.probe(at(fleet, "/a"))).passed
    assert (await prober.probe(at(fleet, "/b"))).passed
    assert b"cookie" not in fleet.heads[-1].lower()
