"""Input validation over REST: each rule positive and negative, 422 naming the field.

The matrix runs against the ASGI app in-process (same guard, routes and schemas as the server).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from discovery.core.facade import DiscoveryCore
from discovery.core.settings import Settings
from gateway_rest.app import create_app
from tests.conftest import AUTH, SECRET, registration

MISSING = object()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(DiscoveryCore(Settings(secret=SECRET, store="memory")))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def body_with(field: str, value: Any) -> dict[str, Any]:
    body = registration()
    if value is MISSING:
        del body[field]
    else:
        body[field] = value
    return body


async def post_register(client: httpx.AsyncClient, body: Any) -> httpx.Response:
    return await client.post("/v1/discovery/register", json=body, headers=AUTH)


def fields_named(response: httpx.Response) -> set[str]:
    return {str(error["loc"][1]) for error in response.json()["detail"] if len(error["loc"]) > 1}


VALID = [
    ("service_name", "a"),
    ("service_name", "Game.v2_eu-west-1"),
    ("service_name", "9lives"),
    ("service_name", "s" * 128),
    ("instance_id", "a"),
    ("instance_id", "game-1:8080"),
    ("instance_id", "i" * 256),
    ("host", "localhost"),
    ("host", "api.example.com"),
    ("host", "my-host-1.internal"),
    ("host", "10.0.0.5"),
    ("host", "255.255.255.255"),
    ("host", "::1"),
    ("host", "fe80::1"),
    ("host", "2001:db8::8a2e:370:7334"),
    ("host", "::ffff:10.0.0.1"),
    ("host", ".".join(["a" * 63] * 3) + "." + "b" * 61),
    ("host", "1host.example.com"),
    ("port", 1),
    ("port", 65535),
    ("port", "8080"),
    ("health_endpoint", "/"),
    ("health_endpoint", "/health"),
    ("health_endpoint", "/actuator/health?verbose=1"),
    ("health_endpoint", "/" + "h" * 1023),
    ("health_endpoint", None),
    ("health_endpoint", MISSING),
    ("metadata", {}),
    ("metadata", {f"k{i}": "v" for i in range(64)}),
    ("metadata", {"k" * 128: "v" * 1024}),
    ("metadata", {"empty": ""}),
    ("metadata", MISSING),
]

INVALID = [
    ("service_name", ""),
    ("service_name", "-game"),
    ("service_name", ".game"),
    ("service_name", "_game"),
    ("service_name", "game service"),
    ("service_name", "game/1"),
    ("service_name", "game:1"),
    ("service_name", "gäme"),
    ("service_name", "s" * 129),
    ("service_name", 123),
    ("service_name", None),
    ("service_name", MISSING),
    ("instance_id", ""),
    ("instance_id", ":1"),
    ("instance_id", "-1"),
    ("instance_id", "a b"),
    ("instance_id", "a/b"),
    ("instance_id", "i" * 257),
    ("instance_id", 1),
    ("instance_id", MISSING),
    ("host", ""),
    ("host", "[::1]"),
    ("host", "-bad.example.com"),
    ("host", "bad-.example.com"),
    ("host", "a..b"),
    ("host", "a.b."),
    ("host", "under_score.example.com"),
    ("host", "has space"),
    ("host", "256.1.1.1"),
    ("host", "1.2.3"),
    ("host", "01.2.3.4"),
    ("host", "1.2.3.4.5"),
    ("host", "::1::2"),
    ("host", "fe80::1%eth0"),
    ("host", "a" * 64 + ".com"),
    ("host", ".".join(["a" * 63] * 4)),
    ("host", "http://example.com"),
    ("host", 10),
    ("host", MISSING),
    ("port", 0),
    ("port", -1),
    ("port", 65536),
    ("port", 10**20),
    ("port", 80.5),
    ("port", "http"),
    ("port", True),
    ("port", None),
    ("port", MISSING),
    ("health_endpoint", ""),
    ("health_endpoint", "health"),
    ("health_endpoint", "//evil.example.com/health"),
    ("health_endpoint", "/a b"),
    ("health_endpoint", "/a\tb"),
    ("health_endpoint", "/a\nb"),
    ("health_endpoint", "/" + "h" * 1024),
    ("health_endpoint", "http://x/health"),
    ("health_endpoint", 5),
    ("metadata", {f"k{i}": "v" for i in range(65)}),
    ("metadata", {"": "v"}),
    ("metadata", {"k" * 129: "v"}),
    ("metadata", {"k": "v" * 1025}),
    ("metadata", {"k": 1}),
    ("metadata", {"k": None}),
    ("metadata", {"k": ["v"]}),
    ("metadata", ["k", "v"]),
    ("metadata", "k=v"),
    ("metadata", None),
]


@pytest.mark.parametrize(("field", "value"), VALID)
async def test_valid_values_register(client: httpx.AsyncClient, field: str, value: Any) -> None:
    response = await post_register(client, body_with(field, value))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(("field", "value"), INVALID)
async def test_invalid_values_get_422_naming_the_field(
    client: httpx.AsyncClient, field: str, value: Any
) -> None:
    response = await post_register(client, body_with(field, value))
    assert response.status_code == 422, response.text
    assert field in fields_named(response)
    assert all(error["loc"][0] == "body" for error in response.json()["detail"])


@pytest.mark.parametrize("load", [-0.01, 1.01, 2, "high", True, [0.5], {"v": 0.5}])
async def test_heartbeat_load_must_be_a_number_in_0_1(client: httpx.AsyncClient, load: Any) -> None:
    await post_register(client, registration())
    response = await client.post(
        "/v1/discovery/heartbeat",
        json={"service_name": "game", "instance_id": "game-1", "load_percentage": load},
        headers=AUTH,
    )
    assert response.status_code == 422
    assert fields_named(response) == {"load_percentage"}


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
async def test_heartbeat_load_must_be_finite(client: httpx.AsyncClient, literal: bytes) -> None:
    await post_register(client, registration())
    body = b'{"service_name": "game", "instance_id": "game-1", "load_percentage": ' + literal + b"}"
    response = await client.post(
        "/v1/discovery/heartbeat",
        content=body,
        headers={**AUTH, "content-type": "application/json"},
    )
    assert response.status_code == 422
    assert fields_named(response) == {"load_percentage"}


@pytest.mark.parametrize("load", [0, 0.0, 0.5, 1, 1.0, None])
async def test_heartbeat_accepts_loads_in_range(client: httpx.AsyncClient, load: Any) -> None:
    await post_register(client, registration())
    response = await client.post(
        "/v1/discovery/heartbeat",
        json={"service_name": "game", "instance_id": "game-1", "load_percentage": load},
        headers=AUTH,
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"instance_id": "game-1"},
        {"service_name": "game"},
        {"service_name": 1, "instance_id": "game-1"},
        [],
        "text",
        None,
    ],
)
async def test_heartbeat_needs_names(client: httpx.AsyncClient, body: Any) -> None:
    response = await client.post("/v1/discovery/heartbeat", json=body, headers=AUTH)
    assert response.status_code == 422


@pytest.mark.parametrize(
    "content", [b"", b"{", b"[]", b"null", b'"x"', b"123", b"\xff\xfe", b'{"a":1}']
)
async def test_malformed_bodies_get_4xx_json(client: httpx.AsyncClient, content: bytes) -> None:
    response = await client.post(
        "/v1/discovery/register",
        content=content,
        headers={**AUTH, "content-type": "application/json"},
    )
    assert response.status_code == 422
    assert "detail" in response.json()


async def test_a_refused_registration_does_not_disturb_the_registered_one(
    client: httpx.AsyncClient,
) -> None:
    await post_register(client, registration(port=1234))
    before = (await client.get("/v1/discovery/services")).json()
    for field, value in INVALID:
        await post_register(client, body_with(field, value))
    assert (await client.get("/v1/discovery/services")).json() == before
