"""The probe transport: one request per single-connection pool, freed when the body closes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from discovery.core.health.transport import SpreadTransport
from discovery.testing import eventually
from tests.instances import FakeInstances, closed_port, fake_instances


@pytest.fixture
async def fleet() -> AsyncIterator[FakeInstances]:
    async with fake_instances() as running:
        running.answer("/fast", 200, "OK")
        running.answer("/slow", 200, "OK", delay=0.2)
        yield running


def client(transport: SpreadTransport) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=transport, timeout=2, trust_env=False)


async def test_concurrent_requests_get_a_connection_each(fleet: FakeInstances) -> None:
    transport = SpreadTransport(4)
    async with client(transport) as http:
        url = f"http://127.0.0.1:{fleet.port}/slow"
        responses = await asyncio.gather(*(http.get(url) for _ in range(4)))
        assert [r.status_code for r in responses] == [200] * 4
        assert fleet.connections == 4
        assert transport.available == 4
        # Sequential requests to the same origin then reuse those connections.
        for _ in range(10):
            assert (await http.get(f"http://127.0.0.1:{fleet.port}/fast")).status_code == 200
        assert fleet.connections == 4


async def test_a_pool_is_busy_until_the_body_is_closed(fleet: FakeInstances) -> None:
    transport = SpreadTransport(2)
    async with client(transport) as http:
        async with http.stream("GET", f"http://127.0.0.1:{fleet.port}/fast") as response:
            assert response.status_code == 200
            assert transport.available == 1
        assert transport.available == 2


async def test_failures_and_cancellation_free_the_pool(fleet: FakeInstances) -> None:
    transport = SpreadTransport(2)
    fleet.answer("/hang", hang=True)
    async with client(transport) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{closed_port()}/")
        assert transport.available == 2
        hung = asyncio.create_task(http.get(f"http://127.0.0.1:{fleet.port}/hang"))
        await eventually(lambda: transport.available == 1)
        hung.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hung
        assert transport.available == 2


async def test_past_its_size_requests_share_pools(fleet: FakeInstances) -> None:
    transport = SpreadTransport(2)
    async with client(transport) as http:
        url = f"http://127.0.0.1:{fleet.port}/slow"
        responses = await asyncio.gather(*(http.get(url) for _ in range(5)))
        assert [r.status_code for r in responses] == [200] * 5
        assert fleet.connections <= 2
        assert transport.available == 2


async def test_a_request_prefers_a_free_connection_to_its_origin(fleet: FakeInstances) -> None:
    transport = SpreadTransport(3)
    async with fake_instances() as other, client(transport) as http:
        other.answer("/slower", 200, "OK", delay=0.4)
        here, there = f"http://127.0.0.1:{fleet.port}/slow", f"http://127.0.0.1:{other.port}/slower"
        for _ in range(2):
            # The pool freed last talks to the other origin: the two requests must still
            # find the two warm connections to theirs.
            await asyncio.gather(http.get(here), http.get(here), http.get(there))
            await asyncio.gather(http.get(here), http.get(here))
        assert (fleet.connections, other.connections) == (2, 1)
