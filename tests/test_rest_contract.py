"""Every row of the legacy REST API (statuses, shapes, headers) against a real in-process server."""

from __future__ import annotations

import re

import httpx
import pytest

from discovery.server import DiscoveryServer
from discovery.testing import eventually
from tests.conftest import AUTH, ON_EVERY_STORE, ServerFactory, register

# Against an in-memory server and against a replica on etcd.
pytestmark = ON_EVERY_STORE

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?\+00:00$")
RECORD_KEYS = {
    "service_name",
    "instance_id",
    "host",
    "port",
    "health_endpoint",
    "status",
    "load_percentage",
    "critical_load",
    "metadata",
    "registered_at",
    "last_heartbeat",
    "last_health_check",
}


async def test_register_answers_the_legacy_shape(rest: httpx.AsyncClient) -> None:
    response = await register(
        rest, service="game", instance="game-1", host="10.0.0.5", health_endpoint="/health"
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "success",
        "message",
        "instance",
        "heartbeat_interval_seconds",
        "ttl_seconds",
    }
    assert body["success"] is True
    assert body["message"] == "Service game:game-1 registered successfully"
    assert (body["heartbeat_interval_seconds"], body["ttl_seconds"]) == (60, 300)
    record = body["instance"]
    assert set(record) == RECORD_KEYS
    assert record["service_name"] == "game"
    assert record["instance_id"] == "game-1"
    assert (record["host"], record["port"]) == ("10.0.0.5", 8080)
    assert record["health_endpoint"] == "/health"
    assert record["status"] == "unknown"
    assert record["load_percentage"] == 0.0
    assert record["critical_load"] is False
    assert record["metadata"] == {"version": "1.0.0"}
    assert ISO_UTC.match(record["registered_at"])
    assert record["last_heartbeat"] is None
    assert record["last_health_check"] is None


async def test_register_defaults(rest: httpx.AsyncClient) -> None:
    body = {"service_name": "s", "instance_id": "i", "host": "localhost", "port": 1}
    response = await rest.post("/v1/discovery/register", json=body, headers=AUTH)
    assert response.status_code == 200
    record = response.json()["instance"]
    assert record["health_endpoint"] == "/health"
    assert record["metadata"] == {}


async def test_register_reports_the_configured_liveness_terms(make_server: ServerFactory) -> None:
    async with (
        make_server(heartbeat_interval=2.5, registration_ttl=10) as server,
        httpx.AsyncClient(base_url=server.rest_url) as rest,
    ):
        body = (await register(rest)).json()
    assert (body["heartbeat_interval_seconds"], body["ttl_seconds"]) == (2.5, 10)


async def test_heartbeat_only_instance_is_healthy_at_once(rest: httpx.AsyncClient) -> None:
    record = (await register(rest, health_endpoint=None)).json()["instance"]
    assert record["health_endpoint"] is None
    assert record["status"] == "healthy"
    healthy = (await rest.get("/v1/discovery/services/game/healthy")).json()
    assert [i["instance_id"] for i in healthy["healthy_instances"]] == ["game-1"]


async def test_heartbeat(rest: httpx.AsyncClient) -> None:
    await register(rest)
    response = await rest.post(
        "/v1/discovery/heartbeat",
        json={"service_name": "game", "instance_id": "game-1", "load_percentage": 0.42},
        headers=AUTH,
    )
    assert response.status_code == 200
    assert response.json() == {"success": True, "message": "Heartbeat updated successfully"}
    record = (await rest.get("/v1/discovery/services/game")).json()["instances"][0]
    assert record["load_percentage"] == 0.42
    assert ISO_UTC.match(record["last_heartbeat"])


async def test_heartbeat_without_load_keeps_the_load(rest: httpx.AsyncClient) -> None:
    await register(rest)
    beat = {"service_name": "game", "instance_id": "game-1"}
    await rest.post("/v1/discovery/heartbeat", json={**beat, "load_percentage": 0.3}, headers=AUTH)
    await rest.post("/v1/discovery/heartbeat", json=beat, headers=AUTH)
    record = (await rest.get("/v1/discovery/services/game")).json()["instances"][0]
    assert record["load_percentage"] == 0.3


async def test_heartbeat_for_an_unknown_instance(rest: httpx.AsyncClient) -> None:
    response = await rest.post(
        "/v1/discovery/heartbeat",
        json={"service_name": "game", "instance_id": "nope"},
        headers=AUTH,
    )
    assert response.status_code == 404
    assert response.json() == {"success": False, "message": "Service not found"}


async def test_unregister(rest: httpx.AsyncClient) -> None:
    await register(rest)
    response = await rest.delete("/v1/discovery/unregister/game/game-1", headers=AUTH)
    assert response.status_code == 200
    assert response.json() == {"success": True, "message": "Service unregistered successfully"}
    again = await rest.delete("/v1/discovery/unregister/game/game-1", headers=AUTH)
    assert again.status_code == 404
    assert again.json() == {"detail": "Service not found"}
    gone = await rest.get("/v1/discovery/services/game")
    assert gone.status_code == 404


async def test_list_services(rest: httpx.AsyncClient) -> None:
    assert (await rest.get("/v1/discovery/services")).json() == {"services": {}}
    await register(rest, service="b", instance="b-1")
    await register(rest, service="a", instance="a-2")
    await register(rest, service="a", instance="a-1")
    body = (await rest.get("/v1/discovery/services")).json()
    assert list(body) == ["services"]
    assert list(body["services"]) == ["b", "a"]
    assert [i["instance_id"] for i in body["services"]["a"]] == ["a-2", "a-1"]
    assert all(set(i) == RECORD_KEYS for i in body["services"]["a"])


async def test_get_service(rest: httpx.AsyncClient) -> None:
    await register(rest)
    response = await rest.get("/v1/discovery/services/game")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"service_name", "instances"}
    assert body["service_name"] == "game"
    assert [set(i) for i in body["instances"]] == [RECORD_KEYS]
    missing = await rest.get("/v1/discovery/services/nope")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "Service 'nope' not found"}


async def test_healthy_lists_only_healthy_instances(rest: httpx.AsyncClient) -> None:
    await register(rest, instance="beating", health_endpoint=None)
    await register(rest, instance="unprobed", health_endpoint="/health", port=1)
    body = (await rest.get("/v1/discovery/services/game/healthy")).json()
    assert set(body) == {"service_name", "healthy_instances"}
    assert [i["instance_id"] for i in body["healthy_instances"]] == ["beating"]
    assert all(i["status"] == "healthy" for i in body["healthy_instances"])
    unknown = await rest.get("/v1/discovery/services/nope/healthy")
    assert unknown.status_code == 200
    assert unknown.json() == {"service_name": "nope", "healthy_instances": []}


async def test_alerts_list(rest: httpx.AsyncClient) -> None:
    assert (await rest.get("/v1/discovery/alerts")).json() == {"alerts": []}
    await register(rest, health_endpoint=None)
    await rest.post(
        "/v1/discovery/heartbeat",
        json={"service_name": "game", "instance_id": "game-1", "load_percentage": 0.95},
        headers=AUTH,
    )

    async def raised() -> bool:
        # A replica on etcd shows it once etcd has it: within 1 s.
        return len((await rest.get("/v1/discovery/alerts")).json()["alerts"]) == 1

    await eventually(raised, within=1.0)
    alerts = (await rest.get("/v1/discovery/alerts")).json()["alerts"]
    alert = alerts[0]
    assert set(alert) == {"service_name", "instance_id", "load_percentage", "threshold", "since"}
    assert (alert["service_name"], alert["instance_id"]) == ("game", "game-1")
    assert (alert["load_percentage"], alert["threshold"]) == (0.95, 0.8)
    assert ISO_UTC.match(alert["since"])
    record = (await rest.get("/v1/discovery/services/game/healthy")).json()["healthy_instances"]
    assert record[0]["critical_load"] is True  # critical, yet still healthy and listed


async def test_own_health(rest: httpx.AsyncClient) -> None:
    response = await rest.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"status", "service", "load_percentage"}
    assert (body["status"], body["service"]) == ("healthy", "service-discovery")
    assert 0.0 <= body["load_percentage"] <= 1.0


async def test_own_health_is_503_while_shutting_down(
    server: DiscoveryServer, rest: httpx.AsyncClient
) -> None:
    server.core.begin_shutdown()
    response = await rest.get("/health")
    assert response.status_code == 503
    assert response.json()["service"] == "service-discovery"


async def test_timestamps_are_utc_iso_with_offset(rest: httpx.AsyncClient) -> None:
    await register(rest, health_endpoint=None)
    await rest.post(
        "/v1/discovery/heartbeat",
        json={"service_name": "game", "instance_id": "game-1"},
        headers=AUTH,
    )
    record = (await rest.get("/v1/discovery/services/game")).json()["instances"][0]
    assert ISO_UTC.match(record["registered_at"])
    assert ISO_UTC.match(record["last_heartbeat"])


async def test_openapi_and_docs(rest: httpx.AsyncClient) -> None:
    schema = (await rest.get("/openapi.json")).json()
    assert "/v1/discovery/register" in schema["paths"]
    assert "bearer" in schema["components"]["securitySchemes"]
    assert (await rest.get("/docs")).status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/nope"),
        ("GET", "/v1/discovery/nope"),
        ("PUT", "/health"),
        ("PATCH", "/v1/discovery/services"),
    ],
)
async def test_unknown_paths_and_methods_get_json_4xx(
    rest: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await rest.request(method, path)
    assert 400 <= response.status_code < 500
    assert "detail" in response.json()


async def test_instance_limits_answer_429_and_keep_what_is_registered(
    make_server: ServerFactory,
) -> None:
    async with (
        make_server(max_instances=3, max_instances_per_service=2) as server,
        httpx.AsyncClient(base_url=server.rest_url) as rest,
    ):
        assert (await register(rest, instance="a")).status_code == 200
        assert (await register(rest, instance="b")).status_code == 200
        refused = await register(rest, expect=429, instance="c")
        assert "limit" in refused.json()["detail"]
        assert (await register(rest, service="other", instance="x")).status_code == 200
        await register(rest, expect=429, service="third", instance="y")
        assert (await register(rest, instance="a", port=9)).status_code == 200  # update is fine
        services = (await rest.get("/v1/discovery/services")).json()["services"]
    assert {name: [i["instance_id"] for i in v] for name, v in services.items()} == {
        "game": ["a", "b"],
        "other": ["x"],
    }
