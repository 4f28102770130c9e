"""Registry state as xDS v3 resources, encoded once and shared.

For a service S: Listener `S` (an api_listener whose HttpConnectionManager routes everything to
cluster S), Cluster `S` (EDS over ADS) and ClusterLoadAssignment `S` (the healthy instances, one
locality). Every resource is kept as the bytes of a `DiscoveryResponse` holding just that
resource: a response is the concatenation of such parts and a small header (protobuf appends the
entries of a repeated field that occurs more than once), so a change is encoded once however
many streams carry it.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable, Hashable
from decimal import ROUND_HALF_UP, Decimal
from typing import NamedTuple

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, config_source_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINTS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
#: The resource types this server answers with resources; others get empty answers.
SERVED_TYPES = (LISTENER, CLUSTER, ENDPOINTS)
ROUTER_FILTER = "envoy.filters.http.router"
#: Endpoint metadata namespace carrying the instance id.
METADATA_NAMESPACE = "discovery"

LB_POLICIES: dict[str, int] = {
    "round_robin": cluster_pb2.Cluster.ROUND_ROBIN,
    "ring_hash": cluster_pb2.Cluster.RING_HASH,
    "least_request": cluster_pb2.Cluster.LEAST_REQUEST,
    "random": cluster_pb2.Cluster.RANDOM,
}


class Endpoint(NamedTuple):
    """One healthy instance as an endpoint: what its LbEndpoint is made of."""

    instance_id: str
    address: str
    port: int
    weight: int
    hostname: str


@functools.lru_cache(maxsize=65536)
def weight(load_percentage: float) -> int:
    """`max(1, round((1 - load) * 100))` with halves rounded up, exactly (no float error)."""
    spare = (Decimal(1) - Decimal(repr(load_percentage))) * 100
    return max(1, int(spare.quantize(Decimal(1), rounding=ROUND_HALF_UP)))


def _part(message: Message) -> bytes:
    packed = any_pb2.Any()
    packed.Pack(message)
    encoded: bytes = discovery_pb2.DiscoveryResponse(resources=[packed]).SerializeToString()
    return encoded


def listener(name: str) -> listener_pb2.Listener:
    """The api_listener gRPC clients resolve `xds:///name` through: everything to cluster name."""
    route = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(prefix=""),
        route=route_components_pb2.RouteAction(cluster=name),
    )
    router = any_pb2.Any()
    router.Pack(router_pb2.Router())
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=name,
        route_config=route_pb2.RouteConfiguration(
            name=name,
            virtual_hosts=[
                route_components_pb2.VirtualHost(name=name, domains=["*"], routes=[route])
            ],
        ),
        http_filters=[hcm_pb2.HttpFilter(name=ROUTER_FILTER, typed_config=router)],
    )
    packed = any_pb2.Any()
    packed.Pack(manager)
    return listener_pb2.Listener(
        name=name, api_listener=api_listener_pb2.ApiListener(api_listener=packed)
    )


def cluster(name: str, lb_policy: str = "round_robin") -> cluster_pb2.Cluster:
    """Cluster `name`: endpoints by EDS over the same ADS stream."""
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(
            service_name=name,
            eds_config=config_source_pb2.ConfigSource(
                ads=config_source_pb2.AggregatedConfigSource(),
                resource_api_version=config_source_pb2.V3,
            ),
        ),
        lb_policy=LB_POLICIES[lb_policy],
        connect_timeout=duration_pb2.Duration(seconds=5),
    )


def load_assignment(
    name: str, endpoints: tuple[Endpoint, ...]
) -> endpoint_pb2.ClusterLoadAssignment:
    """The healthy endpoints of `name` in one weighted locality (none at all when empty)."""
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    if not endpoints:
        return assignment
    locality = assignment.endpoints.add()
    # gRPC rejects an assignment whose locality is missing, and drops one without a weight.
    locality.locality.SetInParent()
    locality.load_balancing_weight.value = 1
    for endpoint in endpoints:
        entry = locality.lb_endpoints.add()
        socket = entry.endpoint.address.socket_address
        socket.address = endpoint.address
        socket.port_value = endpoint.port
        socket.protocol = address_pb2.SocketAddress.TCP
        entry.endpoint.hostname = endpoint.hostname
        entry.health_status = health_check_pb2.HEALTHY
        entry.load_balancing_weight.value = endpoint.weight
        entry.metadata.filter_metadata[METADATA_NAMESPACE].update(
            {"instance_id": endpoint.instance_id}
        )
    return assignment


class ResourceCache:
    """Encoded resources shared by every stream, least recently used dropped past `size`."""

    def __init__(self, lb_policy: str = "round_robin", size: int = 4096) -> None:
        self.lb_policy = lb_policy
        self._size = size
        self._parts: OrderedDict[Hashable, bytes] = OrderedDict()
        # Assignments by the very instance snapshots they were built from (see `shared`).
        self._by_state: OrderedDict[Hashable, bytes] = OrderedDict()

    def listener(self, name: str) -> bytes:
        return self._get((LISTENER, name), lambda: _part(listener(name)))

    def cluster(self, name: str) -> bytes:
        return self._get((CLUSTER, name), lambda: _part(cluster(name, self.lb_policy)))

    def load_assignment(self, name: str, endpoints: tuple[Endpoint, ...]) -> bytes:
        return self._get(
            (ENDPOINTS, name, endpoints), lambda: _part(load_assignment(name, endpoints))
        )

    def shared(self, state: Hashable, build: Callable[[], bytes]) -> bytes:
        """The part built for `state` (a key of shared, unchanging objects, compared by
        identity), built once for every stream that holds the same state: every stream that
        follows a service is told of a change through the same event objects."""
        return self._get(state, build, self._by_state, 256)

    def _get(
        self,
        key: Hashable,
        build: Callable[[], bytes],
        parts: OrderedDict[Hashable, bytes] | None = None,
        size: int = 0,
    ) -> bytes:
        if parts is None:
            parts, size = self._parts, self._size
        part = parts.get(key)
        if part is None:
            part = parts[key] = build()
            if len(parts) > size:
                parts.popitem(last=False)
        else:
            parts.move_to_end(key)
        return part


def string_field(number: int, value: str) -> bytes:
    """A length-delimited protobuf field (tag, varint length, UTF-8 bytes)."""
    data = value.encode()
    size = len(data)
    if size < 0x80:  # a one-byte length: every nonce and version
        return bytes((number << 3 | 2, size)) + data
    length = bytearray()
    while size >= 0x80:
        length.append((size & 0x7F) | 0x80)
        size >>= 7
    length.append(size)
    return bytes((number << 3 | 2,)) + bytes(length) + data


@functools.lru_cache(maxsize=64)
def _type_field(type_url: str) -> bytes:
    return string_field(_TYPE_URL_FIELD, type_url)


@functools.lru_cache(maxsize=256)
def _version_field(version: str) -> bytes:
    # Every stream that follows a change sends the same version: encoded once for all.
    return string_field(_VERSION_FIELD, version)


_VERSION_FIELD = discovery_pb2.DiscoveryResponse.VERSION_INFO_FIELD_NUMBER
_TYPE_URL_FIELD = discovery_pb2.DiscoveryResponse.TYPE_URL_FIELD_NUMBER
_NONCE_FIELD = discovery_pb2.DiscoveryResponse.NONCE_FIELD_NUMBER


def header(version: str, type_url: str, nonce: str) -> bytes:
    """The non-resource fields of a DiscoveryResponse, to follow its resource parts.

    Encoded by hand (three string fields), not through a message: every stream sends its own
    header with every response, so this is the only per-stream encoding there is (and of it
    only the nonce is the stream's own).
    """
    return _version_field(version) + _type_field(type_url) + string_field(_NONCE_FIELD, nonce)
