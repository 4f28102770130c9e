"""The HTTP watch (Server-Sent Events), on a real in-process server.

httpx.ASGITransport buffers whole bodies, so these tests read the stream over a real socket."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from discovery.server import DiscoveryServer
from discovery.testing import eventually
from tests.conftest import AUTH, ServerFactory, add, registration

WATCH = "/v1/discovery/watch"


@dataclass
class Event:
    id: str | None
    data: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.data["type"])


async def events(response: httpx.Response) -> AsyncIterator[Event]:
    """SSE events as an EventSource parses them."""
    event_id: str | None = None
    data: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield Event(event_id, json.loads("\n".join(data)))
            event_id, data = None, []
        elif line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


async def take(stream: AsyncIterator[Event], count: int, within: float = 5) -> list[Event]:
    return [await asyncio.wait_for(anext(stream), within) for _ in range(count)]


async def test_snapshot_then_live_events_with_ids_where_the_contract_puts_them(
    server: DiscoveryServer, rest: httpx.AsyncClient
) -> None:
    await rest.post("/v1/discovery/register", json=registration(), headers=AUTH)
    revision = server.core.registry.revision
    async with rest.stream("GET", WATCH) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        stream = events(response)
        reset, put, synced = await take(stream, 3)
        assert (reset.type, reset.id, reset.data) == (
            "RESET",
            None,
            {"type": "RESET", "revision": revision},
        )
        assert (put.type, put.id) == ("PUT", None)  # snapshot events carry no id
        record = (await rest.get("/v1/discovery/services/game")).json()["instances"][0]
        assert put.data == {"type": "PUT", "revision": revision, "instance": record}
        assert (synced.type, synced.id) == ("SYNCED", str(revision))
        assert synced.data == {"type": "SYNCED", "revision": revision}

        await rest.post(
            "/v1/discovery/register", json=registration(instance="game-2"), headers=AUTH
        )
        await rest.delete("/v1/discovery/unregister/game/game-1", headers=AUTH)
        live_put, live_delete = await take(stream, 2)
        assert (live_put.type, live_put.id) == ("PUT", str(revision + 1))
        assert live_put.data["revision"] == revision + 1
        assert live_put.data["instance"]["instance_id"] == "game-2"
        assert (live_delete.type, live_delete.id) == ("DELETE", str(revision + 2))
        assert live_delete.data["instance"]["instance_id"] == "game-1"


async def test_progress_events_carry_the_current_revision(make_server: ServerFactory) -> None:
    async with (
        make_server(watch_progress_interval=0.2) as server,
        httpx.AsyncClient(base_url=server.rest_url, timeout=5) as client,
        client.stream("GET", WATCH, params={"service": "game"}) as response,
    ):
        stream = events(response)
        await take(stream, 2)  # RESET, SYNCED
        await add(server, "chat", "chat-1")
        (progress,) = await take(stream, 1, within=2)
        revision = server.core.registry.revision
        assert progress.data == {"type": "PROGRESS", "revision": revision}
        assert progress.id == str(revision)


async def test_last_event_id_resumes_without_reset(
    server: DiscoveryServer, rest: httpx.AsyncClient
) -> None:
    await add(server, "game", "game-1")
    async with rest.stream("GET", WATCH) as response:
        last = (await take(events(response), 3))[-1].id
    assert last is not None
    await add(server, "game", "game-2")
    headers = {"Last-Event-ID": last}
    async with rest.stream("GET", WATCH, params={"start_revision": 1}, headers=headers) as response:
        (event,) = await take(events(response), 1)
    assert event.type == "PUT"
    assert event.data["instance"]["instance_id"] == "game-2"
    assert event.id == str(int(last) + 1)


async def test_start_revision_resumes_and_a_lost_one_resets(
    make_server: ServerFactory,
) -> None:
    async with make_server(watch_history_size=2) as server:
        await add(server, "game", "game-1")
        start = server.core.registry.revision
        await add(server, "game", "game-2")
        async with httpx.AsyncClient(base_url=server.rest_url, timeout=5) as client:
            async with client.stream("GET", WATCH, params={"start_revision": start}) as response:
                (event,) = await take(events(response), 1)
            assert (event.type, event.data["instance"]["instance_id"]) == ("PUT", "game-2")
            for n in range(3):
                await add(server, "game", f"game-{n + 3}")
            async with client.stream("GET", WATCH, params={"start_revision": start}) as response:
                kinds = [e.type for e in await take(events(response), 7)]
            assert kinds == ["RESET", "PUT", "PUT", "PUT", "PUT", "PUT", "SYNCED"]


async def test_healthy_only_and_service_filters(
    server: DiscoveryServer, rest: httpx.AsyncClient
) -> None:
    await add(server, "game", "game-1")
    await add(server, "chat", "chat-1")
    params = {"service": ["game", "lobby"], "healthy_only": "true"}
    async with rest.stream("GET", WATCH, params=params) as response:
        stream = events(response)
        snapshot = await take(stream, 3)
        assert [e.data.get("instance", {}).get("instance_id") for e in snapshot] == [
            None,
            "game-1",
            None,
        ]
        server.core.registry.sever([("game", "game-1")])
        (gone,) = await take(stream, 1)
        assert (gone.type, gone.data["instance"]["status"]) == ("DELETE", "unhealthy")


async def test_a_bad_service_name_is_422(rest: httpx.AsyncClient) -> None:
    response = await rest.get(WATCH, params={"service": "no spaces"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "service"]


async def test_shutdown_ends_every_sse_stream(make_server: ServerFactory) -> None:
    server_context = make_server()
    server = await server_context.__aenter__()
    try:
        async with (
            httpx.AsyncClient(base_url=server.rest_url, timeout=5) as client,
            client.stream("GET", WATCH) as first,
            client.stream("GET", WATCH) as second,
        ):
            streams = [events(first), events(second)]
            for stream in streams:
                await take(stream, 2)
            started = time.monotonic()
            await server_context.__aexit__(None, None, None)
            assert time.monotonic() - started < 2
            for stream in streams:
                with pytest.raises(StopAsyncIteration):
                    await asyncio.wait_for(anext(stream), 2)
    finally:
        await server_context.__aexit__(None, None, None)


async def test_a_client_that_goes_away_leaves_the_hub(
    server: DiscoveryServer, rest: httpx.AsyncClient
) -> None:
    async with rest.stream("GET", WATCH) as response:
        await take(events(response), 2)
        assert len(server.core.watch_hub) == 1
    await eventually(lambda: len(server.core.watch_hub) == 0)  # the server notices at once
