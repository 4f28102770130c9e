"""The ADS stream through a raw client built from the xds-protos types."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import health_check_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from discovery.core.model import Registration
from discovery.rpc.xds.resources import weight
from discovery.server import DiscoveryServer
from discovery.testing import eventually
from tests.conftest import ServerFactory
from tests.xds_helpers import (
    CLUSTER,
    ENDPOINTS,
    LISTENER,
    AdsClient,
    Response,
    assignments,
    clusters,
    endpoint_weights,
    listeners,
)


async def add(server: DiscoveryServer, service: str, instance: str, port: int, **kw: Any) -> None:
    kw.setdefault("health_endpoint", None)  # heartbeat-only: healthy at once
    await server.core.register(Registration(service, instance, "127.0.0.1", port, **kw))


@pytest.fixture
async def ads(server: DiscoveryServer) -> AsyncIterator[AdsClient]:
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        client = AdsClient(channel)
        yield client
        client.cancel()


def test_weight_rounds_half_up() -> None:
    assert weight(0.0) == 100
    assert weight(0.125) == 88  # 87.5
    assert weight(0.115) == 89  # 88.5, which floats hold as 88.49999...
    assert weight(0.005) == 100  # 99.5
    assert weight(0.994) == 1
    assert weight(1.0) == 1


async def test_resources_for_a_service(server: DiscoveryServer, ads: AdsClient) -> None:
    await add(server, "api", "api-1", 9001)
    await add(server, "api", "api-2", 9002)

    response = await ads.subscribe(LISTENER, ["api"])
    listener = listeners(response)["api"]
    manager = hcm_pb2.HttpConnectionManager()
    assert listener.api_listener.api_listener.Unpack(manager)
    [host] = manager.route_config.virtual_hosts
    assert list(host.domains) == ["*"]
    [route] = host.routes
    assert route.match.prefix == ""
    assert route.route.cluster == "api"
    [router] = manager.http_filters
    assert router.name == "envoy.filters.http.router"
    assert router.typed_config.Is(router_pb2.Router.DESCRIPTOR)

    response = await ads.subscribe(CLUSTER, ["api"])
    cluster = clusters(response)["api"]
    assert cluster.type == cluster_pb2.Cluster.EDS
    assert cluster.eds_cluster_config.eds_config.HasField("ads")
    assert cluster.lb_policy == cluster_pb2.Cluster.ROUND_ROBIN

    response = await ads.subscribe(ENDPOINTS, ["api"])
    assignment = assignments(response)["api"]
    [locality] = assignment.endpoints
    assert locality.HasField("locality")
    assert locality.load_balancing_weight.value == 1
    assert endpoint_weights(assignment) == {"127.0.0.1:9001": 100, "127.0.0.1:9002": 100}
    for entry in locality.lb_endpoints:
        assert entry.health_status == health_check_pb2.HEALTHY
    assert response.version_info == str(server.core.revision)


async def test_weights_follow_published_load(server: DiscoveryServer, ads: AdsClient) -> None:
    await add(server, "api", "api-1", 9001)
    first = await ads.subscribe(ENDPOINTS, ["api"])
    server.core.heartbeat("api", "api-1", 0.125)
    response = await ads.read()
    assert endpoint_weights(assignments(response)["api"]) == {"127.0.0.1:9001": 88}
    assert int(response.version_info) > int(first.version_info)
    await ads.ack(response, ["api"])
    # A drift under 0.05 is not published, so it sends nothing; the next published load does.
    server.core.heartbeat("api", "api-1", 0.14)
    server.core.heartbeat("api", "api-1", 0.5)
    response = await ads.read()
    assert endpoint_weights(assignments(response)["api"]) == {"127.0.0.1:9001": 50}


async def test_ack_sends_nothing_until_a_change(server: DiscoveryServer, ads: AdsClient) -> None:
    await add(server, "api", "api-1", 9001)
    first = await ads.subscribe(ENDPOINTS, ["api"])
    # Changes the stream does not follow, or that leave its resources as they were, send
    # nothing: the next message is the one for the change that matters.
    await add(server, "other", "other-1", 9100)
    await add(server, "api", "api-1", 9001, metadata={"v": "2"})
    await add(server, "api", "api-2", 9002)
    response = await ads.read()
    assert set(endpoint_weights(assignments(response)["api"])) == {
        "127.0.0.1:9001",
        "127.0.0.1:9002",
    }
    assert response.nonce != first.nonce
    assert int(response.version_info) > int(first.version_info)


async def test_nack_is_logged_and_the_version_not_resent(
    server: DiscoveryServer, ads: AdsClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "discovery.xds")
    await add(server, "api", "api-1", 9001)
    await ads.request(ENDPOINTS, ["api"])
    rejected = await ads.read()
    await ads.request(ENDPOINTS, ["api"], "", rejected.nonce, error="weights look odd to me")
    await eventually(lambda: "weights look odd to me" in caplog.text)
    [record] = [r for r in caplog.records if "weights look odd" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert rejected.version_info in record.getMessage()
    # The rejected version is not sent again: the next message is a new version.
    await add(server, "api", "api-2", 9002)
    response = await ads.read()
    assert response.version_info != rejected.version_info
    assert len(endpoint_weights(assignments(response)["api"])) == 2


async def test_unknown_service_is_answered_as_absent(
    server: DiscoveryServer, ads: AdsClient
) -> None:
    for type_url in (LISTENER, CLUSTER, ENDPOINTS):
        started = asyncio.get_running_loop().time()
        response = await ads.subscribe(type_url, ["nowhere"], within=1.0)
        assert asyncio.get_running_loop().time() - started < 1.0
        assert list(response.resources) == []
    # It appears once registered.
    await add(server, "nowhere", "n-1", 9001)
    seen: dict[str, Response] = {}
    while len(seen) < 3:
        response = await ads.read()
        seen[response.type_url] = response
        await ads.ack(response, ["nowhere"])
    assert set(listeners(seen[LISTENER])) == {"nowhere"}
    assert set(clusters(seen[CLUSTER])) == {"nowhere"}
    assert set(assignments(seen[ENDPOINTS])) == {"nowhere"}


async def test_all_unhealthy_keeps_listener_and_cluster(
    server: DiscoveryServer, ads: AdsClient
) -> None:
    await add(server, "api", "api-1", 9001)
    for type_url in (LISTENER, CLUSTER, ENDPOINTS):
        await ads.subscribe(type_url, ["api"])
    server.core.sever([("api", "api-1")])
    response = await ads.read()
    assert response.type_url == ENDPOINTS  # Listener and Cluster stay as they were
    assert list(assignments(response)["api"].endpoints) == []
    await ads.ack(response, ["api"])
    # No instance left: the service is absent from every type.
    await server.core.unregister("api", "api-1")
    seen: dict[str, Response] = {}
    while len(seen) < 3:
        response = await ads.read()
        seen[response.type_url] = response
        await ads.ack(response, ["api"])
    assert all(list(r.resources) == [] for r in seen.values())


async def test_adding_names_answers_with_the_whole_set(
    server: DiscoveryServer, ads: AdsClient
) -> None:
    await add(server, "a", "a-1", 9001)
    await add(server, "b", "b-1", 9002)
    first = await ads.subscribe(CLUSTER, ["a"])
    assert set(clusters(first)) == {"a"}
    second = await ads.subscribe(CLUSTER, ["a", "b"])
    assert set(clusters(second)) == {"a", "b"}
    assert second.version_info != first.version_info


async def test_wildcard_cluster_subscription(server: DiscoveryServer, ads: AdsClient) -> None:
    await add(server, "a", "a-1", 9001)
    response = await ads.subscribe(CLUSTER, [])
    assert set(clusters(response)) == {"a"}
    await add(server, "b", "b-1", 9002)
    response = await ads.read()
    assert set(clusters(response)) == {"a", "b"}


async def test_host_names_are_resolved(server: DiscoveryServer, ads: AdsClient) -> None:
    await server.core.register(Registration("api", "api-1", "localhost", 9001, None))
    await ads.request(ENDPOINTS, ["api"])
    response = await ads.read()
    if not endpoint_weights(assignments(response)["api"]):
        # Left out until the name resolves, then sent.
        await ads.ack(response, ["api"])
        response = await ads.read()
    [address] = endpoint_weights(assignments(response)["api"])
    assert address in ("127.0.0.1:9001", "::1:9001")


async def test_unresolvable_hosts_are_left_out_with_a_warning(
    server: DiscoveryServer, ads: AdsClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "discovery.xds")
    await add(server, "api", "api-1", 9001)
    await server.core.register(Registration("api", "api-2", "no-such-host.invalid", 9002, None))
    response = await ads.subscribe(ENDPOINTS, ["api"])
    assert endpoint_weights(assignments(response)["api"]) == {"127.0.0.1:9001": 100}
    await eventually(lambda: "no-such-host.invalid" in caplog.text, within=30)
    assert "left out" in caplog.text


async def test_shutdown_ends_streams(make_server: ServerFactory) -> None:
    async with make_server() as server, grpc.aio.insecure_channel(server.grpc_target) as channel:
        following = AdsClient(channel)
        await following.subscribe(CLUSTER, ["api"])
        idle = AdsClient(channel)  # follows no service at all
        await idle.subscribe("type.googleapis.com/envoy.config.route.v3.RouteConfiguration", [])
        stopping = asyncio.ensure_future(server.stop())
        for ads in (following, idle):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await ads.read(within=5)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        await stopping


async def test_a_slow_client_is_reset_and_catches_up(make_server: ServerFactory) -> None:
    async with (
        make_server(watch_max_backlog=5) as server,
        grpc.aio.insecure_channel(server.grpc_target) as channel,
    ):
        await add(server, "api", "api-1", 9001)
        ads = AdsClient(channel)
        await ads.subscribe(ENDPOINTS, ["api"])
        # The client reads nothing while the weight changes many times: once the transport's
        # window is full the stream's watcher falls behind and is reset, never blocking the rest.
        [watcher] = server.core.watch_hub.watchers()
        for n in range(3000):
            server.core.heartbeat("api", "api-1", 0.2 if n % 2 else 0.6)
            await asyncio.sleep(0)  # the stream writes what it can
            if watcher.resets >= 2:
                break
        assert watcher.resets >= 2, "the stream never fell behind"
        server.core.heartbeat("api", "api-1", 0.5)
        while True:  # it catches up with the last state
            response = await ads.read()
            if endpoint_weights(assignments(response)["api"]) == {"127.0.0.1:9001": 50}:
                break


async def test_a_stale_nonce_is_ignored(server: DiscoveryServer, ads: AdsClient) -> None:
    await add(server, "a", "a-1", 9001)
    await add(server, "b", "b-1", 9002)
    first = await ads.subscribe(CLUSTER, ["a"])
    second = await ads.subscribe(CLUSTER, ["a", "b"])
    # A request answering the first response again, asking for other names, is stale.
    await ads.request(CLUSTER, ["b"], first.version_info, first.nonce)
    await ads.request(CLUSTER, ["a"], second.version_info, second.nonce)  # the current one
    response = await ads.read()
    assert set(clusters(response)) == {"a"}


async def test_types_without_resources_are_answered_empty(ads: AdsClient) -> None:
    route = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
    response = await ads.subscribe(route, ["anything"])
    assert list(response.resources) == []


async def test_reflection_lists_the_ads_service(server: DiscoveryServer) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = [reply async for reply in stub.ServerReflectionInfo(iter([request]))]
    names = {s.name for s in replies[0].list_services_response.service}
    assert "envoy.service.discovery.v3.AggregatedDiscoveryService" in names
