"""`GET /metrics`: every family from the start, counts by protocol, reason,
result, event and outcome, bounded labels. Over the wire: httpx, gRPC stubs, real HTTP instances.
"""

from __future__ import annotations

import asyncio

import grpc
import httpx
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from discovery.core.metrics import Histogram
from discovery.core.model import Registration
from discovery.core.watch.events import WatchSelector
from discovery.server import DiscoveryServer
from discovery.testing import eventually
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc
from tests.conftest import AUTH, GRPC_AUTH, ServerFactory, Stub, read_message, registration
from tests.instances import fake_instances
from tests.metrics_helpers import Scrape, counted, scrape

#: Family -> its type and the label values every fresh server shows at zero.
FAMILIES: dict[str, tuple[str, dict[str, tuple[str, ...]]]] = {
    "discovery_instances": ("gauge", {}),
    "discovery_critical_load_instances": ("gauge", {}),
    "discovery_registrations": ("counter", {"protocol": ("rest", "grpc", "keepalive")}),
    "discovery_heartbeats": ("counter", {"protocol": ("rest", "grpc", "keepalive")}),
    "discovery_unregistrations": ("counter", {"protocol": ("rest", "grpc", "keepalive")}),
    "discovery_expirations": ("counter", {"reason": ("ttl", "heartbeat_grace", "stream_broken")}),
    "discovery_probes": ("counter", {"result": ("passed", "failed", "timed_out")}),
    "discovery_probe_duration_seconds": ("histogram", {}),
    "discovery_watchers": ("gauge", {"protocol": ("grpc", "sse")}),
    "discovery_watch_resets": ("counter", {}),
    "discovery_alerts": ("counter", {"event": ("raised", "cleared")}),
    "discovery_webhook_deliveries": ("counter", {"outcome": ("delivered", "failed", "dropped")}),
    "discovery_request_duration_seconds": ("histogram", {}),
    "process_cpu_seconds": ("counter", {}),
    "process_resident_memory_bytes": ("gauge", {}),
    "process_start_time_seconds": ("gauge", {}),
    "process_open_fds": ("gauge", {}),
}


async def test_every_family_is_there_before_its_first_sample(rest: httpx.AsyncClient) -> None:
    response = await rest.get("/metrics")
    assert response.status_code == 200
    text = response.text
    found = await scrape(rest)
    for name, (kind, zeros) in FAMILIES.items():
        assert name in found.families, name
        assert found.families[name].type == kind, name
        exposed = name + "_total" if kind == "counter" else name
        assert f"# TYPE {exposed} {kind}" in text
        for label, values in zeros.items():
            for value in values:
                assert found.value(exposed, **{label: value}) == 0, (name, value)
    assert found.value("discovery_watch_resets_total") == 0
    assert found.value("discovery_probe_duration_seconds_count") == 0


async def test_openmetrics_when_the_scraper_asks_for_it(rest: httpx.AsyncClient) -> None:
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    response = await rest.get("/metrics", headers={"Accept": accept})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")
    # The OpenMetrics parser carries no annotations.
    families = text_string_to_metric_families(response.text)  # type: ignore[no-untyped-call]
    names = {f.name for f in families}
    assert {"discovery_heartbeats", "discovery_instances", "process_cpu_seconds"} <= names


async def test_writes_are_counted_by_the_protocol_they_came_in_by(
    server: DiscoveryServer, rest: httpx.AsyncClient, stub: Stub
) -> None:
    for instance in ("r-1", "r-2"):
        body = registration(instance=instance)
        assert (await rest.post("/v1/discovery/register", json=body, headers=AUTH)).is_success
    await stub.Register(
        pb.RegisterRequest(service_name="game", instance_id="g-1", host="127.0.0.1", port=9),
        metadata=GRPC_AUTH,
    )
    beat = {"service_name": "game", "instance_id": "r-1"}
    for _ in range(3):  # the hot path
        assert (await rest.post("/v1/discovery/heartbeat", json=beat, headers=AUTH)).is_success
    # The framework route (a content type the hot path leaves to it) counts the same.
    raw = {**AUTH, "Content-Type": "application/vnd.api+json"}
    assert (await rest.post("/v1/discovery/heartbeat", json=beat, headers=raw)).is_success
    missing = {"service_name": "game", "instance_id": "nobody"}
    assert (await rest.post("/v1/discovery/heartbeat", json=missing, headers=AUTH)).status_code == (
        404
    )
    request = pb.HeartbeatRequest(service_name="game", instance_id="g-1")
    await stub.Heartbeat(request, metadata=GRPC_AUTH)
    call = stub.KeepAlive(None, metadata=GRPC_AUTH)
    for _ in range(2):
        await call.write(pb.KeepAliveRequest(service_name="game", instance_id="g-1", detach=True))
        assert (await asyncio.wait_for(read_message(call), 5)).code == 0
    await call.done_writing()
    await asyncio.wait_for(call.wait_for_connection(), 5)
    assert (await rest.delete("/v1/discovery/unregister/game/r-2", headers=AUTH)).is_success
    await stub.Unregister(
        pb.UnregisterRequest(service_name="game", instance_id="g-1"), metadata=GRPC_AUTH
    )

    found = await scrape(rest)
    expected = {
        "discovery_registrations_total": {"rest": 2, "grpc": 1, "keepalive": 0},
        "discovery_heartbeats_total": {"rest": 4, "grpc": 1, "keepalive": 2},
        "discovery_unregistrations_total": {"rest": 1, "grpc": 1, "keepalive": 0},
    }
    for sample, by_protocol in expected.items():
        for protocol, count in by_protocol.items():
            assert found.value(sample, protocol=protocol) == count, (sample, protocol)


async def test_instances_are_counted_by_service_status_and_critical_load(
    server: DiscoveryServer, rest: httpx.AsyncClient
) -> None:
    async with fake_instances() as fleet:
        fleet.answer("/ok", 200, {"status": "UP"})
        fleet.answer("/down", 503)
        bodies = [
            registration("game", "beats"),  # heartbeat-only: healthy at once
            registration("game", "hot"),
            registration("game", "ok", port=fleet.port, health_endpoint="/ok"),
            registration("game", "down", port=fleet.port, health_endpoint="/down"),
            registration("chat", "never", port=fleet.port, health_endpoint="/missing"),
        ]
        for body in bodies:
            assert (await rest.post("/v1/discovery/register", json=body, headers=AUTH)).is_success
        hot = {"service_name": "game", "instance_id": "hot", "load_percentage": 0.95}
        assert (await rest.post("/v1/discovery/heartbeat", json=hot, headers=AUTH)).is_success

        async def settled() -> bool:
            found = await scrape(rest)
            return (
                found.value("discovery_instances", service="game", status="healthy") == 3
                and found.value("discovery_instances", service="game", status="unhealthy") == 1
                and found.value("discovery_instances", service="chat", status="unhealthy") == 1
            )

        await eventually(settled, within=10)
        found = await scrape(rest)
        assert found.value("discovery_instances", service="game", status="unknown") == 0
        assert found.value("discovery_critical_load_instances", service="game") == 1
        assert found.value("discovery_critical_load_instances", service="chat") == 0
        assert found.value("discovery_alerts_total", event="raised") == 1
        assert found.value("discovery_probes_total", result="passed") >= 1
        assert found.value("discovery_probes_total", result="failed") >= 2
        assert found.value("discovery_probe_duration_seconds_count") >= 3
        # No instance id anywhere in a label set.
        for family in ("discovery_instances", "discovery_critical_load_instances"):
            assert all("instance_id" not in labels for labels in found.labels(family))

        cool = {**hot, "load_percentage": 0.1}
        assert (await rest.post("/v1/discovery/heartbeat", json=cool, headers=AUTH)).is_success
        assert await counted(rest, "discovery_alerts_total", event="cleared") == 1
        assert await counted(rest, "discovery_critical_load_instances", service="game") == 0


async def test_a_probe_that_times_out_is_counted_as_such(make_server: ServerFactory) -> None:
    async with (
        make_server(health_check_timeout=0.2) as server,
        httpx.AsyncClient(base_url=server.rest_url, timeout=10) as rest,
        fake_instances() as fleet,
    ):
        fleet.answer("/hung", hang=True)
        body = registration(port=fleet.port, health_endpoint="/hung")
        assert (await rest.post("/v1/discovery/register", json=body, headers=AUTH)).is_success

        async def timed_out() -> bool:
            return await counted(rest, "discovery_probes_total", result="timed_out") >= 1

        await eventually(timed_out, within=10)


async def test_expirations_by_reason(make_server: ServerFactory) -> None:
    async with (
        make_server(registration_ttl=2.0, heartbeat_interval=0.1) as server,
        httpx.AsyncClient(base_url=server.rest_url, timeout=10) as rest,
        grpc.aio.insecure_channel(server.grpc_target) as channel,
    ):
        stub = pb_grpc.DiscoveryServiceStub(channel)
        for instance in ("quiet", "streamed"):
            body = registration(instance=instance)
            assert (await rest.post("/v1/discovery/register", json=body, headers=AUTH)).is_success
        call = stub.KeepAlive(None, metadata=GRPC_AUTH)
        await call.write(pb.KeepAliveRequest(service_name="game", instance_id="streamed"))
        assert (await asyncio.wait_for(read_message(call), 5)).code == 0
        call.cancel()  # a break: "streamed" turns unhealthy at once

        async def expired() -> bool:
            found = await scrape(rest)
            return (
                found.value("discovery_expirations_total", reason="stream_broken") == 1
                and found.value("discovery_expirations_total", reason="heartbeat_grace") >= 1
                and found.value("discovery_expirations_total", reason="ttl") == 2
            )

        await eventually(expired, within=10)


async def test_watchers_by_protocol_and_resets(
    server: DiscoveryServer, rest: httpx.AsyncClient, stub: Stub
) -> None:
    watch = stub.Watch(pb.WatchRequest(start_revision=1))  # long gone: a reset snapshot
    first = await asyncio.wait_for(watch.read(), 5)
    assert isinstance(first, pb.WatchResponse)
    assert first.reset
    async with rest.stream("GET", "/v1/discovery/watch") as sse:
        assert sse.status_code == 200

        async def open_watchers() -> bool:
            found = await scrape(rest)
            return (
                found.value("discovery_watchers", protocol="grpc") == 1
                and found.value("discovery_watchers", protocol="sse") == 1
            )

        await eventually(open_watchers, within=5)
    watch.cancel()

    async def closed() -> bool:
        found = await scrape(rest)
        return (
            found.value("discovery_watchers", protocol="grpc") == 0
            and found.value("discovery_watchers", protocol="sse") == 0
        )

    await eventually(closed, within=5)
    assert await counted(rest, "discovery_watch_resets_total") == 1


async def test_a_slow_watcher_that_falls_behind_counts_a_reset(make_server: ServerFactory) -> None:
    async with make_server(watch_max_backlog=2) as server:
        watcher = server.core.watch_hub.watch(WatchSelector(frozenset(), False, 0))
        for i in range(5):  # nobody reads: the backlog passes 2
            await server.core.register(_registration(f"i-{i}"))
        assert watcher.behind
        async with httpx.AsyncClient(base_url=server.rest_url) as rest:
            assert await counted(rest, "discovery_watch_resets_total") == 1
        watcher.close()


async def test_webhook_deliveries_are_counted(make_server: ServerFactory) -> None:
    async with fake_instances() as receiver:
        receiver.answer("/hook", 204)
        url = f"http://127.0.0.1:{receiver.port}/hook"
        async with (
            make_server(alert_webhook_url=url) as server,
            httpx.AsyncClient(base_url=server.rest_url, timeout=10) as rest,
        ):
            body = registration()
            assert (await rest.post("/v1/discovery/register", json=body, headers=AUTH)).is_success
            beat = {"service_name": "game", "instance_id": "game-1", "load_percentage": 0.99}
            assert (await rest.post("/v1/discovery/heartbeat", json=beat, headers=AUTH)).is_success

            async def delivered() -> bool:
                found = await scrape(rest)
                return found.value("discovery_webhook_deliveries_total", outcome="delivered") == 1

            await eventually(delivered, within=10)
            found = await scrape(rest)
            assert found.value("discovery_webhook_deliveries_total", outcome="failed") == 0


async def test_request_durations_are_labelled_by_route_template_never_by_path(
    server: DiscoveryServer, rest: httpx.AsyncClient, stub: Stub
) -> None:
    assert (await rest.post("/v1/discovery/register", json=registration(), headers=AUTH)).is_success
    await rest.get("/v1/discovery/services/game")  # hot path
    await rest.get("/v1/discovery/services/game/healthy")  # hot path
    await rest.get("/v1/discovery/services/secret-name-1")  # the route's 404
    await rest.delete("/v1/discovery/unregister/game/secret-name-2", headers=AUTH)
    await rest.get("/no/such/secret-name-3")
    await rest.put("/v1/discovery/register")  # wrong method: still the route's template
    await stub.GetService(pb.GetServiceRequest(service_name="game"))
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Heartbeat(pb.HeartbeatRequest(service_name="game", instance_id="x"))

    found = await scrape(rest)
    methods = {
        (labels["protocol"], labels["method"])
        for labels in found.labels("discovery_request_duration_seconds")
        if "method" in labels
    }
    assert not any("secret-name" in method for _, method in methods)
    count = "discovery_request_duration_seconds_count"
    assert found.value(count, protocol="rest", method="/v1/discovery/register") == 2
    for template in (
        "/v1/discovery/services/{service_name}",
        "/v1/discovery/unregister/{service_name}/{instance_id}",
        "unmatched",
        "/v1/discovery/services/{service_name}/healthy",
    ):
        assert found.value(count, protocol="rest", method=template) >= 1, template
    assert found.value(count, protocol="rest", method="/v1/discovery/services/{service_name}") == 2
    assert found.value(count, protocol="grpc", method="GetService") == 1
    assert found.value(count, protocol="grpc", method="Heartbeat") == 1
    assert found.value(count, protocol="grpc", method="Register") == 0


def test_histogram_buckets_hold_values_up_to_their_bound() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 3.0):
        histogram.observe(value)
    assert histogram.counts == [2, 2, 1]
    assert histogram.count == 5
    assert histogram.total == pytest.approx(4.65)


async def test_a_scrape_reads_the_whole_registry(make_server: ServerFactory) -> None:
    async with make_server() as server:
        for service in range(20):
            for instance in range(10):
                await server.core.register(_registration(f"i-{instance}", f"svc-{service}"))
        async with httpx.AsyncClient(base_url=server.rest_url) as rest:
            found: Scrape = await scrape(rest)
        services = {labels["service"] for labels in found.labels("discovery_instances")}
        assert len(services) == 20
        total = sum(s.value for s in found.families["discovery_instances"].samples)
        assert total == 200


def _registration(instance: str, service: str = "game") -> Registration:
    return Registration(service, instance, "127.0.0.1", 9, None)
