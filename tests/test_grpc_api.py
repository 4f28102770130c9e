"""The unary RPCs of discovery.v1, gRPC health and reflection, on a real in-process server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from discovery.server import DiscoveryServer
from discovery.testing import eventually
from discovery.v1 import discovery_pb2 as pb
from tests.conftest import (
    AUTH,
    EOF,
    GRPC_AUTH,
    ON_EVERY_STORE,
    SECRET,
    ServerFactory,
    Stub,
    registration,
)

# Against an in-memory server and against a replica on etcd.
pytestmark = ON_EVERY_STORE


def register_request(**fields: object) -> pb.RegisterRequest:
    values: dict[str, object] = {
        "service_name": "game",
        "instance_id": "game-1",
        "host": "10.0.0.5",
        "port": 8080,
        "metadata": {"version": "1.0.0"},
    }
    values.update(fields)
    return pb.RegisterRequest(**values)  # type: ignore[arg-type]


async def rpc_error(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


async def test_register(stub: Stub) -> None:
    reply = await stub.Register(register_request(), metadata=GRPC_AUTH)
    instance = reply.instance
    assert (instance.service_name, instance.instance_id) == ("game", "game-1")
    assert (instance.host, instance.port) == ("10.0.0.5", 8080)
    assert instance.health_endpoint == "/health"  # unset means /health
    assert instance.status == pb.HEALTH_STATUS_UNKNOWN
    assert dict(instance.metadata) == {"version": "1.0.0"}
    assert instance.HasField("registered_at")
    assert not instance.HasField("last_heartbeat")
    assert not instance.HasField("last_health_check")
    assert reply.heartbeat_interval.ToTimedelta().total_seconds() == 60
    assert reply.ttl.ToTimedelta().total_seconds() == 300


async def test_empty_health_endpoint_means_heartbeat_only(stub: Stub) -> None:
    reply = await stub.Register(register_request(health_endpoint=""), metadata=GRPC_AUTH)
    assert reply.instance.health_endpoint == ""
    assert reply.instance.status == pb.HEALTH_STATUS_HEALTHY
    healthy = await stub.GetService(pb.GetServiceRequest(service_name="game", healthy_only=True))
    assert [i.instance_id for i in healthy.instances] == ["game-1"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("service_name", ""),
        ("service_name", "-bad"),
        ("instance_id", ""),
        ("instance_id", "a b"),
        ("host", ""),
        ("host", "bad host"),
        ("host", "[::1]"),
        ("port", 0),
        ("port", 70000),
        ("health_endpoint", "health"),
        ("health_endpoint", "//x"),
        ("metadata", {"": "v"}),
        ("metadata", {"k": "v" * 1025}),
        ("metadata", {f"k{i}": "v" for i in range(65)}),
    ],
)
async def test_register_invalid_argument_names_the_field(
    stub: Stub, field: str, value: object
) -> None:
    error = await rpc_error(stub.Register(register_request(**{field: value}), metadata=GRPC_AUTH))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (error.details() or "")


async def test_register_past_the_limits_is_resource_exhausted(make_server: ServerFactory) -> None:
    async with (
        make_server(max_instances_per_service=1) as server,
        grpc.aio.insecure_channel(server.grpc_target) as channel,
    ):
        stub = Stub(channel)
        await stub.Register(register_request(), metadata=GRPC_AUTH)
        error = await rpc_error(
            stub.Register(register_request(instance_id="game-2"), metadata=GRPC_AUTH)
        )
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        listed = await stub.GetService(pb.GetServiceRequest(service_name="game"))
        assert [i.instance_id for i in listed.instances] == ["game-1"]


async def test_heartbeat(stub: Stub) -> None:
    await stub.Register(register_request(), metadata=GRPC_AUTH)
    reply = await stub.Heartbeat(
        pb.HeartbeatRequest(service_name="game", instance_id="game-1", load_percentage=0.25),
        metadata=GRPC_AUTH,
    )
    assert reply.instance.load_percentage == 0.25
    assert reply.instance.HasField("last_heartbeat")
    plain = await stub.Heartbeat(
        pb.HeartbeatRequest(service_name="game", instance_id="game-1"), metadata=GRPC_AUTH
    )
    assert plain.instance.load_percentage == 0.25  # no load given: the last one stays


async def test_heartbeat_errors(stub: Stub) -> None:
    error = await rpc_error(
        stub.Heartbeat(
            pb.HeartbeatRequest(service_name="game", instance_id="x"), metadata=GRPC_AUTH
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    for service, instance, field in (("", "x", "service_name"), ("game", "a b", "instance_id")):
        error = await rpc_error(
            stub.Heartbeat(
                pb.HeartbeatRequest(service_name=service, instance_id=instance),
                metadata=GRPC_AUTH,
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (error.details() or "")
    await stub.Register(register_request(), metadata=GRPC_AUTH)
    for load in (-0.5, 1.5, float("nan"), float("inf")):
        error = await rpc_error(
            stub.Heartbeat(
                pb.HeartbeatRequest(
                    service_name="game", instance_id="game-1", load_percentage=load
                ),
                metadata=GRPC_AUTH,
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "load_percentage" in (error.details() or "")


async def test_unregister(stub: Stub) -> None:
    await stub.Register(register_request(), metadata=GRPC_AUTH)
    reply = await stub.Unregister(
        pb.UnregisterRequest(service_name="game", instance_id="game-1"), metadata=GRPC_AUTH
    )
    assert reply == pb.UnregisterResponse()
    error = await rpc_error(
        stub.Unregister(
            pb.UnregisterRequest(service_name="game", instance_id="game-1"), metadata=GRPC_AUTH
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_list_services_and_get_service(stub: Stub) -> None:
    empty = await stub.ListServices(pb.ListServicesRequest())
    assert list(empty.services) == []
    await stub.Register(register_request(service_name="b", instance_id="b-1"), metadata=GRPC_AUTH)
    await stub.Register(
        register_request(service_name="a", instance_id="a-1", health_endpoint=""),
        metadata=GRPC_AUTH,
    )
    await stub.Register(register_request(service_name="a", instance_id="a-2"), metadata=GRPC_AUTH)
    listed = await stub.ListServices(pb.ListServicesRequest())
    assert [(s.name, [i.instance_id for i in s.instances]) for s in listed.services] == [
        ("b", ["b-1"]),
        ("a", ["a-1", "a-2"]),
    ]
    assert listed.revision > empty.revision
    full = await stub.GetService(pb.GetServiceRequest(service_name="a"))
    assert [i.instance_id for i in full.instances] == ["a-1", "a-2"]
    assert full.service_name == "a"

    async def same_revision() -> bool:
        # Probe results may land between two reads (on a replica they come back through
        # etcd a moment later): both reads carry the registry's revision once it holds still.
        listed = await stub.ListServices(pb.ListServicesRequest())
        full = await stub.GetService(pb.GetServiceRequest(service_name="a"))
        return full.revision == listed.revision

    await eventually(same_revision, within=5)
    healthy = await stub.GetService(pb.GetServiceRequest(service_name="a", healthy_only=True))
    assert [i.instance_id for i in healthy.instances] == ["a-1"]
    error = await rpc_error(stub.GetService(pb.GetServiceRequest(service_name="nope")))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_list_alerts(stub: Stub) -> None:
    assert list((await stub.ListAlerts(pb.ListAlertsRequest())).alerts) == []
    await stub.Register(register_request(health_endpoint=""), metadata=GRPC_AUTH)
    await stub.Heartbeat(
        pb.HeartbeatRequest(service_name="game", instance_id="game-1", load_percentage=0.9),
        metadata=GRPC_AUTH,
    )

    async def raised() -> bool:
        # A replica on etcd shows it once etcd has it: within 1 s.
        return len((await stub.ListAlerts(pb.ListAlertsRequest())).alerts) == 1

    await eventually(raised, within=1.0)
    alerts = (await stub.ListAlerts(pb.ListAlertsRequest())).alerts
    assert [(a.service_name, a.instance_id, a.load_percentage, a.threshold) for a in alerts] == [
        ("game", "game-1", 0.9, 0.8)
    ]
    assert alerts[0].HasField("since")


WRITE_CALLS = [
    ("Register", lambda: register_request()),
    ("Heartbeat", lambda: pb.HeartbeatRequest(service_name="game", instance_id="game-1")),
    ("Unregister", lambda: pb.UnregisterRequest(service_name="game", instance_id="game-1")),
]


@pytest.mark.parametrize(("method", "request_factory"), WRITE_CALLS)
@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", SECRET),),
        (("authorization", "Basic x"),),
        (("authorization", "Bearer wrong"),),
    ],
)
async def test_writes_need_the_secret(
    stub: Stub, method: str, request_factory: object, metadata: tuple[tuple[str, str], ...]
) -> None:
    call = getattr(stub, method)(request_factory(), metadata=metadata)  # type: ignore[operator]
    error = await rpc_error(call)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_keepalive_needs_the_secret(stub: Stub) -> None:
    call = stub.KeepAlive(None, metadata=(("authorization", "Bearer wrong"),))
    error = await rpc_error(call.read())
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_scheme_is_case_insensitive(stub: Stub) -> None:
    reply = await stub.Register(
        register_request(), metadata=(("authorization", f"bEARER {SECRET}"),)
    )
    assert reply.instance.instance_id == "game-1"


async def test_reads_need_no_credentials(stub: Stub) -> None:
    await stub.ListServices(pb.ListServicesRequest())
    await stub.ListAlerts(pb.ListAlertsRequest())


async def test_grpc_registration_is_seen_over_rest_and_back(
    server: DiscoveryServer, stub: Stub, rest: httpx.AsyncClient
) -> None:
    reply = await stub.Register(register_request(), metadata=GRPC_AUTH)
    record = (await rest.get("/v1/discovery/services/game")).json()["instances"][0]
    assert (record["host"], record["port"], record["metadata"]) == (
        "10.0.0.5",
        8080,
        {"version": "1.0.0"},
    )
    assert datetime.fromisoformat(
        record["registered_at"]
    ) == reply.instance.registered_at.ToDatetime(
        tzinfo=datetime.fromisoformat(record["registered_at"]).tzinfo
    )
    await rest.post("/v1/discovery/register", json=registration(instance="game-2"), headers=AUTH)
    listed = await stub.GetService(pb.GetServiceRequest(service_name="game"))
    assert [i.instance_id for i in listed.instances] == ["game-1", "game-2"]
    await stub.Unregister(
        pb.UnregisterRequest(service_name="game", instance_id="game-2"), metadata=GRPC_AUTH
    )
    body = (await rest.get("/v1/discovery/services/game")).json()
    assert [i["instance_id"] for i in body["instances"]] == ["game-1"]


@pytest.fixture
async def channel(server: DiscoveryServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        yield channel


async def test_health_service(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "discovery.v1.DiscoveryService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    error = await rpc_error(health.Check(health_pb2.HealthCheckRequest(service="nope")))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_health_turns_not_serving_on_shutdown_and_watch_ends_ok(
    make_server: ServerFactory,
) -> None:
    async with make_server() as server:
        channel = grpc.aio.insecure_channel(server.grpc_target)
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service="discovery.v1.DiscoveryService"))
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.create_task(server.stop())
        second = await asyncio.wait_for(watch.read(), 5)
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert await asyncio.wait_for(watch.read(), 5) is EOF
        assert await watch.code() == grpc.StatusCode.OK
        await asyncio.wait_for(stopping, 10)
        await channel.close(None)


async def test_reflection_lists_the_services(channel: grpc.aio.Channel) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")
        yield reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="discovery.v1.DiscoveryService"
        )

    replies = [reply async for reply in reflection.ServerReflectionInfo(ask())]
    names = {s.name for s in replies[0].list_services_response.service}
    assert {
        "discovery.v1.DiscoveryService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
    assert replies[1].file_descriptor_response.file_descriptor_proto
