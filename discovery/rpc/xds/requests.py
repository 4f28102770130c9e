"""An ADS stream's requests as they come off the wire.

The method is registered without a deserializer: the stream decodes its requests itself, so a
request that does not decode, or names no resource type, ends the stream with INVALID_ARGUMENT
and a short message (as the Go control plane does; the client reconnects with backoff and keeps
what it had) instead of gRPC's UNKNOWN and a traceback per request.

Most requests are ACKs, one per response per stream, and a client's ACK is predictable: the
names and type of its last request, the version and nonce of the last response, in field-number
order (how gRPC's protobuf libraries in every language write a message). Each subscription
(`discovery.rpc.xds.subscription`) keeps that expected encoding, built from `shape` and
`ack_bytes`, and the stream takes a request equal to it as an ACK without decoding it; anything
else (a node on every request as Envoy sends it, other names, a NACK) is decoded in full.
"""

from __future__ import annotations

from envoy.service.discovery.v3 import discovery_pb2

from discovery.rpc.decoding import Malformed, decode
from discovery.rpc.xds.resources import string_field

DiscoveryRequest = discovery_pb2.DiscoveryRequest

_VERSION_FIELD = DiscoveryRequest.VERSION_INFO_FIELD_NUMBER
_NONCE_FIELD = DiscoveryRequest.RESPONSE_NONCE_FIELD_NUMBER


def decode_request(raw: bytes) -> discovery_pb2.DiscoveryRequest:
    """The request in `raw`, or `Malformed` saying why it is not one this server can take."""
    request = decode(DiscoveryRequest.FromString, raw)
    if not request.type_url:
        raise Malformed("malformed request: type_url is required on an ADS stream")
    return request


def shape(request: discovery_pb2.DiscoveryRequest) -> bytes:
    """The fields of `request` an ACK of the next response repeats: its names and type."""
    again = DiscoveryRequest(resource_names=request.resource_names, type_url=request.type_url)
    encoded: bytes = again.SerializeToString()
    return encoded


def ack_bytes(version: str, shape: bytes, nonce: str) -> bytes:
    """The encoding of the ACK of response (`version`, `nonce`) by a client whose last request
    of the type had `shape` (fields 1, 3, 4 and 5 in order; 3 and 4 are the shape)."""
    return string_field(_VERSION_FIELD, version) + shape + string_field(_NONCE_FIELD, nonce)
