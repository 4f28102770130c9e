"""xDS v3 for proxyless gRPC clients and Envoy, on the gRPC port.

`add_xds_service(server, core)` registers
`envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources` (state of the
world). Each stream follows the services it asks for through the watch hub, so a change reaches
xDS clients as fast as Watch clients: `resources` turns registry state into Listener, Cluster
and ClusterLoadAssignment resources (encoded once, shared), `subscription` keeps the per-type
protocol state (versions, nonces, ACK and NACK), `requests` decodes the client's requests (a
malformed one ends its stream INVALID_ARGUMENT) and recognises ACKs undecoded, `stream` runs one
stream, `dns` resolves instances registered by host name. The message types come from the
`xds-protos` package.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2

from discovery.core.facade import DiscoveryCore
from discovery.ratelimit import RateLimitedLog
from discovery.rpc.decoding import Malformed
from discovery.rpc.xds.dns import DnsCache
from discovery.rpc.xds.resources import ResourceCache
from discovery.rpc.xds.stream import AdsStream, Context, stream_aggregated_resources

SERVICE_NAME: str = ads_pb2.DESCRIPTOR.services_by_name["AggregatedDiscoveryService"].full_name

__all__ = ["SERVICE_NAME", "XdsService", "add_xds_service"]


def _as_bytes(message: bytes) -> bytes:
    """Responses are assembled from pre-encoded parts and leave untouched."""
    return message


class XdsService:
    """What every ADS stream of a server shares: the core, the encoded resources, the DNS cache."""

    def __init__(self, core: DiscoveryCore) -> None:
        self.core = core
        self.cache = ResourceCache(core.settings.xds_lb_policy)
        self.dns = DnsCache(core.settings.xds_dns_refresh)
        self.streams: set[AdsStream] = set()
        self._log = RateLimitedLog(
            logging.getLogger("discovery.xds"), core.settings.client_error_log_interval
        )
        core.on_shutdown(self.shutdown)

    async def stream(self, requests: Any, context: Context) -> None:
        """StreamAggregatedResources; reads through `context`, not the request iterator."""
        await stream_aggregated_resources(
            self.core, self.cache, self.dns, context, self.streams, self.refused
        )

    def refused(self, error: Malformed) -> None:
        """Log a request that did not decode, at most once per interval (clients can send
        any number of them)."""
        self._log.warning("Malformed xDS requests refused (last: %s)", error)

    def shutdown(self) -> None:
        """End every stream (their clients get UNAVAILABLE and reconnect elsewhere)."""
        self.dns.close()
        for stream in list(self.streams):
            stream.end()


def add_xds_service(server: grpc.aio.Server, core: DiscoveryCore) -> XdsService:
    """Serve ADS on `server` over `core`; DeltaAggregatedResources stays UNIMPLEMENTED."""
    service = XdsService(core)
    handler = grpc.stream_stream_rpc_method_handler(
        service.stream,
        request_deserializer=None,  # the stream decodes (discovery.rpc.xds.requests)
        response_serializer=_as_bytes,
    )
    handlers = {"StreamAggregatedResources": handler}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    # As the generated code does: registered methods skip a lookup on every call. Missing from
    # grpc-stubs; grpcio has had it since 1.63.
    server.add_registered_method_handlers(SERVICE_NAME, handlers)  # type: ignore[attr-defined]
    return service
