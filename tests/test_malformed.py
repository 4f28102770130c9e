"""Malformed protobuf on every gRPC method (xDS included), against the console script:
INVALID_ARGUMENT with a short message, never UNKNOWN; the log stays bounded however many arrive."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.service.discovery.v3 import discovery_pb2 as xds_pb

from discovery.testing import ServerProcess
from discovery.v1 import discovery_pb2 as pb
from tests.conftest import read_message

SERVICE = "/discovery.v1.DiscoveryService/"
UNARY = [
    SERVICE + "Register",
    SERVICE + "Heartbeat",
    SERVICE + "Unregister",
    SERVICE + "ListServices",
    SERVICE + "GetService",
    SERVICE + "ListAlerts",
    "/grpc.health.v1.Health/Check",
]
SERVER_STREAMING = [SERVICE + "Watch", "/grpc.health.v1.Health/Watch"]

#: A string field (field 1 of every request that has one) holding invalid UTF-8.
BAD_UTF8 = b"\x0a\x03\xff\xfe\xfd"
TRUNCATED = pb.RegisterRequest(service_name="game", instance_id="game-1").SerializeToString()[:-3]
CORRUPT = b"\xff\xff\xff\xff"
PAYLOADS = {"bad utf-8": BAD_UTF8, "truncated": TRUNCATED, "corrupt": CORRUPT}


def _raw(channel: grpc.aio.Channel, method: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)


@pytest.fixture
async def server() -> AsyncIterator[ServerProcess]:
    async with await ServerProcess.start(
        env={"SERVICE_DISCOVERY_SECRET": "s3cret", "CLIENT_ERROR_LOG_INTERVAL_SECONDS": "60"}
    ) as process:
        yield process


async def test_every_method_answers_malformed_requests_with_invalid_argument(
    server: ServerProcess,
) -> None:
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        for method in UNARY:
            for name, payload in PAYLOADS.items():
                if method.endswith(("ListServices", "ListAlerts")) and name == "bad utf-8":
                    payload = CORRUPT  # no string field: unknown fields are not an error
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await _raw(channel, method)(payload, timeout=10)
                assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, (method, name)
                assert len(caught.value.details() or "") < 300
        for method in SERVER_STREAMING:
            for payload in PAYLOADS.values():
                call = channel.unary_stream(
                    method, request_serializer=None, response_deserializer=None
                )(payload, timeout=10)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call.read()
                assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, method
        # KeepAlive: a malformed request is refused in its ack; the stream goes on.
        keepalive: grpc.aio.StreamStreamCall[bytes, bytes] = channel.stream_stream(
            SERVICE + "KeepAlive", request_serializer=None, response_deserializer=None
        )(None, metadata=(("authorization", "Bearer s3cret"),), timeout=10)
        await keepalive.write(BAD_UTF8)
        ack = pb.KeepAliveResponse.FromString(await read_message(keepalive))
        assert ack.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        good = pb.KeepAliveRequest(service_name="game", instance_id="nobody")
        await keepalive.write(good.SerializeToString())
        ack = pb.KeepAliveResponse.FromString(await read_message(keepalive))
        assert ack.code == grpc.StatusCode.NOT_FOUND.value[0]
        await keepalive.done_writing()
        # Reflection decodes its own requests too.
        reflection = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            request_serializer=None,
            response_deserializer=None,
        )(None, timeout=10)
        await reflection.write(CORRUPT)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await reflection.read()
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        # Nothing was disturbed: the server still answers.
        services = await _raw(channel, SERVICE + "ListServices")(b"", timeout=10)
        assert pb.ListServicesResponse.FromString(services).services == []


async def test_a_flood_of_malformed_requests_writes_a_bounded_log(server: ServerProcess) -> None:
    before = len(server.output)
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        register = _raw(channel, SERVICE + "Register")
        get = _raw(channel, SERVICE + "GetService")

        async def bad(n: int) -> grpc.StatusCode | None:
            call = register if n % 2 else get
            try:
                await call(BAD_UTF8 if n % 3 else TRUNCATED, timeout=20)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return None

        codes = await asyncio.gather(*(bad(n) for n in range(400)))
    assert set(codes) == {grpc.StatusCode.INVALID_ARGUMENT}
    written = server.output[before:]
    assert "Traceback" not in written
    assert "DecodeError" not in written or written.count("\n") <= 2
    # One line per interval (60 s here), whatever the number of bad requests.
    assert written.count("\n") <= 2, written
    assert len(written) < 1000


ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
ENDPOINTS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


def _ads(channel: grpc.aio.Channel) -> grpc.aio.StreamStreamCall[bytes, bytes]:
    method = channel.stream_stream(ADS, request_serializer=None, response_deserializer=None)
    return method(None, timeout=10)


async def test_ads_streams_end_invalid_argument_on_a_malformed_request(
    server: ServerProcess,
) -> None:
    good = xds_pb.DiscoveryRequest(type_url=ENDPOINTS, resource_names=["nowhere"])
    good.node.id = "raw-client"
    # Field 4 (type_url) holding invalid UTF-8.
    bad_type = b"\x22\x03\xff\xfe\xfd"
    no_type = xds_pb.DiscoveryRequest(resource_names=["nowhere"]).SerializeToString()
    cases = {**PAYLOADS, "bad type_url": bad_type, "no type_url": no_type}
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        bystander = _ads(channel)  # a well-behaved stream on the same connection
        await bystander.write(good.SerializeToString())
        first = xds_pb.DiscoveryResponse.FromString(await read_message(bystander))
        for name, payload in cases.items():
            for opening in (True, False):
                call = _ads(channel)
                if not opening:  # after a good request and its answer
                    await call.write(good.SerializeToString())
                    await read_message(call)
                await call.write(payload)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call.read()
                assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, (name, opening)
                details = caught.value.details() or ""
                assert details.startswith("malformed request"), details
                assert len(details) < 300
        assert "type_url is required" in details  # the last case
        # The bystander was not disturbed: its ACK is taken and the stream is still up.
        ack = xds_pb.DiscoveryRequest(
            version_info=first.version_info,
            resource_names=["nowhere"],
            type_url=ENDPOINTS,
            response_nonce=first.nonce,
        )
        await bystander.write(ack.SerializeToString())
        await bystander.write(bad_type)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await bystander.read()
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    written = server.output
    assert "Traceback" not in written
    # Logged once per interval (60 s here), not once per stream.
    assert written.count("Malformed xDS requests refused") == 1, written
