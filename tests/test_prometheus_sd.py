"""`GET /v1/discovery/sd/prometheus`: the http_sd_configs format, and a real
Prometheus that discovers registered instances, scrapes them and `/metrics`, and drops what goes.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

from discovery.testing import ServerProcess, eventually
from tests.conftest import AUTH, registration
from tests.instances import FakeInstances, fake_instances
from tests.prometheus import active_targets, prometheus, query

SD = "/v1/discovery/sd/prometheus"


async def _register(rest: httpx.AsyncClient, **fields: Any) -> None:
    response = await rest.post("/v1/discovery/register", json=registration(**fields), headers=AUTH)
    assert response.status_code == 200, response.text


async def test_one_target_group_per_healthy_instance(rest: httpx.AsyncClient) -> None:
    await _register(rest, instance="a", metadata={"version": "1.0", "zone.name": "eu-1"})
    await _register(rest, instance="b", host="::1", port=9090, metadata={})
    await _register(rest, service="chat", instance="c", port=7000)
    response = await rest.get(SD)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == [
        {
            "targets": ["127.0.0.1:8080"],
            "labels": {
                "__meta_discovery_service": "game",
                "__meta_discovery_instance_id": "a",
                "__meta_discovery_status": "healthy",
                "__meta_discovery_metadata_version": "1.0",
                "__meta_discovery_metadata_zone_name": "eu-1",
            },
        },
        {
            "targets": ["[::1]:9090"],
            "labels": {
                "__meta_discovery_service": "game",
                "__meta_discovery_instance_id": "b",
                "__meta_discovery_status": "healthy",
            },
        },
        {
            "targets": ["127.0.0.1:7000"],
            "labels": {
                "__meta_discovery_service": "chat",
                "__meta_discovery_instance_id": "c",
                "__meta_discovery_status": "healthy",
                "__meta_discovery_metadata_version": "1.0.0",
            },
        },
    ]


async def test_service_filter_healthy_only_and_unknown_services(
    rest: httpx.AsyncClient,
) -> None:
    await _register(rest, instance="up")
    # A probed instance whose endpoint nothing answers: unhealthy after its first probe.
    await _register(rest, instance="down", port=1, health_endpoint="/health")
    await _register(rest, service="chat", instance="c")

    async def probed() -> bool:
        everything = (await rest.get(SD, params={"healthy_only": "false"})).json()
        return any(g["labels"]["__meta_discovery_status"] == "unhealthy" for g in everything)

    await eventually(probed, within=10)

    def ids(groups: list[dict[str, Any]]) -> list[str]:
        return [g["labels"]["__meta_discovery_instance_id"] for g in groups]

    assert ids((await rest.get(SD)).json()) == ["up", "c"]
    assert ids((await rest.get(SD, params={"service": "game"})).json()) == ["up"]
    both = {"service": ["chat", "game", "chat"], "healthy_only": "false"}
    assert ids((await rest.get(SD, params=both)).json()) == ["c", "up", "down"]
    assert (await rest.get(SD, params={"service": "nobody"})).json() == []


@pytest.mark.parametrize(
    ("params", "name"),
    [({"healthy_only": "maybe"}, "healthy_only"), ({"service": "-bad name"}, "service")],
)
async def test_invalid_query_values_are_422_naming_the_parameter(
    rest: httpx.AsyncClient, params: dict[str, str], name: str
) -> None:
    response = await rest.get(SD, params=params)
    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [["query", name]]


def _config(rest_port: int) -> str:
    return textwrap.dedent(
        f"""\
        global:
          scrape_interval: 1s
          scrape_timeout: 900ms
        scrape_configs:
          - job_name: discovered
            http_sd_configs:
              - url: http://127.0.0.1:{rest_port}{SD}
                refresh_interval: 1s
            relabel_configs:
              - source_labels: [__meta_discovery_service]
                target_label: service
              - source_labels: [__meta_discovery_instance_id]
                target_label: instance_id
              - source_labels: [__meta_discovery_metadata_zone]
                target_label: zone
          - job_name: discovery
            static_configs:
              - targets: ["127.0.0.1:{rest_port}"]
        """
    )


def _instance(fleet: FakeInstances) -> None:
    fleet.answer("/health", 200, {"status": "UP"})
    fleet.answer("/metrics", 200, "demo_requests_total 7\n")


@pytest.mark.timeout(90)
async def test_a_real_prometheus_discovers_scrapes_and_drops_instances(tmp_path: Path) -> None:
    env = {"HEALTH_CHECK_INTERVAL_SECONDS": "0.5", "SERVICE_DISCOVERY_STORE": "memory"}
    async with (
        fake_instances() as first,
        fake_instances() as second,
        await ServerProcess.start(env=env) as server,
        httpx.AsyncClient(base_url=server.rest_url, timeout=10) as rest,
        prometheus(tmp_path, _config(server.rest_port)) as api,
    ):
        for fleet, name in ((first, "game-1"), (second, "game-2")):
            _instance(fleet)
            await _register(
                rest,
                instance=name,
                port=fleet.port,
                health_endpoint="/health",
                metadata={"zone": "eu-1"},
            )

        async def scraped(names: set[str]) -> bool:
            targets = await active_targets(api, "discovered")
            seen = {t["labels"].get("instance_id") for t in targets if t["health"] == "up"}
            return seen == names and len(targets) == len(names)

        await eventually(lambda: scraped({"game-1", "game-2"}), within=20, every=0.2)
        for target in await active_targets(api, "discovered"):
            assert target["labels"]["service"] == "game"
            assert target["labels"]["zone"] == "eu-1"
            assert target["discoveredLabels"]["__meta_discovery_status"] == "healthy"

        async def ingested() -> bool:
            # Prometheus parsed our own /metrics and scraped the instances' ones.
            ours = await query(api, 'discovery_instances{service="game",status="healthy"}')
            theirs = await query(api, 'demo_requests_total{service="game"}')
            return [r["value"][1] for r in ours] == ["2"] and len(theirs) == 2

        await eventually(ingested, within=20, every=0.2)
        own = await active_targets(api, "discovery")
        assert [(t["health"], t["lastError"]) for t in own] == [("up", "")]

        response = await rest.delete("/v1/discovery/unregister/game/game-1", headers=AUTH)
        assert response.status_code == 200
        await eventually(lambda: scraped({"game-2"}), within=20, every=0.2)

        second.answer("/health", 503)  # game-2 turns unhealthy: dropped from the targets
        await eventually(lambda: scraped(set()), within=20, every=0.2)
        assert await server.stop() == 0
