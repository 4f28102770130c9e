"""A raw ADS client over the generated xds-protos types, for tests and the bench."""

from __future__ import annotations

import asyncio
from typing import Any, TypeAlias

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINTS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"

#: xds-protos ships no type stubs: its messages are Any to the type checker.
Response: TypeAlias = Any


class AdsClient:
    """One StreamAggregatedResources call: send requests, read responses with a deadline."""

    def __init__(self, channel: grpc.aio.Channel, node: str = "test-node") -> None:
        self._stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        self._node = node
        self._first = True
        self.call: Any = self._stub.StreamAggregatedResources()

    async def request(
        self,
        type_url: str,
        names: list[str],
        version: str = "",
        nonce: str = "",
        error: str | None = None,
    ) -> None:
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url, resource_names=names, version_info=version, response_nonce=nonce
        )
        if self._first:
            request.node.id = self._node
            self._first = False
        if error is not None:
            request.error_detail.code = 3
            request.error_detail.message = error
        await self.call.write(request)

    async def ack(self, response: Response, names: list[str]) -> None:
        await self.request(response.type_url, names, response.version_info, response.nonce)

    async def read(self, within: float = 5.0) -> Response:
        message = await asyncio.wait_for(self.call.read(), within)
        assert isinstance(message, discovery_pb2.DiscoveryResponse), (
            f"stream ended: {await self.call.code()}"
        )
        return message

    async def subscribe(self, type_url: str, names: list[str], within: float = 5.0) -> Response:
        """Ask for `names` and return the answer (acknowledged)."""
        await self.request(type_url, names)
        response = await self.read(within)
        assert response.type_url == type_url
        await self.ack(response, names)
        return response

    def cancel(self) -> None:
        self.call.cancel()


def listeners(response: Response) -> dict[str, listener_pb2.Listener]:
    return {r.name: r for r in _unpacked(response, listener_pb2.Listener)}


def clusters(response: Response) -> dict[str, cluster_pb2.Cluster]:
    return {r.name: r for r in _unpacked(response, cluster_pb2.Cluster)}


def assignments(response: Response) -> dict[str, endpoint_pb2.ClusterLoadAssignment]:
    return {r.cluster_name: r for r in _unpacked(response, endpoint_pb2.ClusterLoadAssignment)}


def endpoint_weights(assignment: endpoint_pb2.ClusterLoadAssignment) -> dict[str, int]:
    """`address:port` -> endpoint weight, over every locality."""
    weights: dict[str, int] = {}
    for locality in assignment.endpoints:
        for entry in locality.lb_endpoints:
            socket = entry.endpoint.address.socket_address
            weights[f"{socket.address}:{socket.port_value}"] = entry.load_balancing_weight.value
    return weights


def _unpacked(response: Response, kind: Any) -> list[Any]:
    found = []
    for packed in response.resources:
        assert isinstance(packed, any_pb2.Any)
        message = kind()
        assert packed.Unpack(message), packed.type_url
        found.append(message)
    return found
