"""The hot paths answer byte for byte as the FastAPI routes do, and leave the rest to them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from discovery.core.facade import DiscoveryCore
from discovery.core.model import HealthStatus
from discovery.core.settings import Settings
from discovery.testing import FakeClock
from gateway_rest.app import create_app
from gateway_rest.hot import HotPaths
from tests.conftest import AUTH, SECRET, registration


def without_hot_paths(app: FastAPI) -> FastAPI:
    app.user_middleware = [m for m in app.user_middleware if m.cls is not HotPaths]
    return app


@pytest.fixture
def core() -> DiscoveryCore:
    return DiscoveryCore(
        Settings(secret=SECRET, store="memory"), FakeClock(wall=1_800_000_000.123456)
    )


@pytest.fixture
async def clients(
    core: DiscoveryCore,
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    hot, plain = create_app(core), without_hot_paths(create_app(core))
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=hot), base_url="http://t") as a,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=plain), base_url="http://t") as b,
    ):
        yield a, b


def same(one: httpx.Response, other: httpx.Response) -> None:
    assert one.status_code == other.status_code
    assert one.content == other.content
    assert one.headers.get("content-type") == other.headers.get("content-type")
    assert one.headers.get("content-length") == other.headers.get("content-length")


async def populate(client: httpx.AsyncClient, core: DiscoveryCore) -> None:
    bodies: list[dict[str, Any]] = [
        registration(instance="a", metadata={"zone": "eu-1", "ünï": 'cödé "quoted" \\ \n'}),
        registration(instance="b", health_endpoint="/health", port=1),
        registration(service="other", instance="x:1", host="::1"),
    ]
    for body in bodies:
        assert (await client.post("/v1/discovery/register", json=body, headers=AUTH)).is_success
    for load in (0.1, 1e-7, 0.3333333333333333):
        beat = {"service_name": "game", "instance_id": "a", "load_percentage": load}
        assert (await client.post("/v1/discovery/heartbeat", json=beat, headers=AUTH)).is_success
    core.registry.record_health(core.registry.require("game", "b"), HealthStatus.UNHEALTHY, 0.9)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/discovery/services",
        "/v1/discovery/services/game",
        "/v1/discovery/services/game/healthy",
        "/v1/discovery/services/other/healthy",
        "/v1/discovery/services/nope",
        "/v1/discovery/services/nope/healthy",
        "/v1/discovery/services/gäme%20x/healthy",
        "/v1/discovery/services/game/nope",
        "/v1/discovery/services/",
    ],
)
async def test_reads_match_the_routes(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient], core: DiscoveryCore, path: str
) -> None:
    hot, plain = clients
    await populate(hot, core)
    first = await hot.get(path)
    same(first, await plain.get(path))
    same(await hot.get(path), first)  # from the cache now


async def test_cached_reads_follow_every_change(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient], core: DiscoveryCore
) -> None:
    hot, plain = clients
    await populate(hot, core)
    path = "/v1/discovery/services/game"
    await hot.get(path)
    clock = core.clock
    assert isinstance(clock, FakeClock)
    clock.advance(1.5)
    beat = {"service_name": "game", "instance_id": "a"}  # only last_heartbeat moves
    await hot.post("/v1/discovery/heartbeat", json=beat, headers=AUTH)
    same(await hot.get(path), await plain.get(path))
    await hot.delete("/v1/discovery/unregister/game/a", headers=AUTH)
    await hot.delete("/v1/discovery/unregister/game/b", headers=AUTH)
    same(await hot.get(path), await plain.get(path))
    assert (await hot.get(path)).status_code == 404
    assert (await hot.get(path + "/healthy")).json() == {
        "service_name": "game",
        "healthy_instances": [],
    }
    await hot.post("/v1/discovery/register", json=registration(instance="c"), headers=AUTH)
    same(await hot.get(path), await plain.get(path))
    same(await hot.get("/v1/discovery/services"), await plain.get("/v1/discovery/services"))


@pytest.mark.parametrize(
    ("content", "headers"),
    [
        (b'{"service_name": "game", "instance_id": "a", "load_percentage": 0.5}', {}),
        (b'{"service_name": "game", "instance_id": "nope"}', {}),
        (b'{"service_name": "game", "instance_id": "a", "load_percentage": 2}', {}),
        (b'{"service_name": "game", "instance_id": "a", "load_percentage": NaN}', {}),
        (b'{"service_name": "-bad", "instance_id": "a"}', {}),
        (b'{"service_name": "game", "instance_id": "a", "load_percentage": true}', {}),
        (b'{"service_name": "game"', {}),
        (b"[]", {}),
        (b"", {}),
        (b'{"service_name": "game", "instance_id": "a"}', {"content-type": "text/plain"}),
        (b'{"service_name": "game", "instance_id": "a"}', {"content-type": ""}),
        (
            b'{"service_name": "game", "instance_id": "a"}',
            {"content-type": "application/merge-patch+json; charset=utf-8"},
        ),
        *(
            (b'{"service_name": "game", "instance_id": "a"}', {"content-type": media})
            for media in ("text/x+json", "foo/bar+json", "+json", "application/json/x")
        ),
    ],
)
async def test_heartbeats_answer_as_the_route_does(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient],
    core: DiscoveryCore,
    content: bytes,
    headers: dict[str, str],
) -> None:
    hot, plain = clients
    await populate(hot, core)
    sent = {"content-type": "application/json", **AUTH, **headers}
    if not sent["content-type"]:
        del sent["content-type"]
    first = await hot.post("/v1/discovery/heartbeat", content=content, headers=sent)
    same(first, await plain.post("/v1/discovery/heartbeat", content=content, headers=sent))


async def test_a_hot_heartbeat_still_needs_the_secret(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient], core: DiscoveryCore
) -> None:
    hot, _ = clients
    await populate(hot, core)
    before = core.registry.require("game", "a").last_heartbeat
    response = await hot.post(
        "/v1/discovery/heartbeat", json={"service_name": "game", "instance_id": "a"}
    )
    assert response.status_code == 401
    assert core.registry.require("game", "a").last_heartbeat == before
