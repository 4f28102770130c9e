"""ACKs recognised by their bytes: exactly the requests that decoding would take as a plain
ACK of the last response, and the subscription left as decoding would leave it."""

from __future__ import annotations

import copy

import pytest
from envoy.service.discovery.v3 import discovery_pb2 as xds_pb

from discovery.rpc.decoding import Malformed
from discovery.rpc.xds.requests import decode_request
from discovery.rpc.xds.resources import CLUSTER, ENDPOINTS, LISTENER, string_field
from discovery.rpc.xds.subscription import Subscription, Verdict


def request(type_url: str, names: list[str], version: str = "", nonce: str = "") -> bytes:
    message = xds_pb.DiscoveryRequest(
        type_url=type_url, resource_names=names, version_info=version, response_nonce=nonce
    )
    encoded: bytes = message.SerializeToString()
    return encoded


def subscribed(type_url: str, names: list[str]) -> Subscription:
    """A subscription that asked for `names` (with a node, as a first request does) and was
    answered with version 7, nonce 3."""
    first = xds_pb.DiscoveryRequest(type_url=type_url, resource_names=names)
    first.node.id = "client"
    subscription = Subscription(type_url)
    assert subscription.update(first, "peer") is Verdict.NEW
    subscription.sending({}, "7", "3")
    return subscription


@pytest.mark.parametrize(
    ("type_url", "names"),
    [
        (ENDPOINTS, ["b", "a"]),  # the client's order is kept
        (ENDPOINTS, ["only"]),
        (LISTENER, []),  # a wildcard
        (CLUSTER, ["*"]),
    ],
)
def test_a_clients_ack_is_recognised_and_taken_as_decoding_would(
    type_url: str, names: list[str]
) -> None:
    subscription = subscribed(type_url, names)
    ack = request(type_url, names, "7", "3")
    assert subscription.expected_ack() == ack
    decoded = copy.deepcopy(subscription)
    assert decoded.update(decode_request(ack), "peer") is Verdict.ACK
    subscription.acknowledged()
    for field in ("names", "owed", "version", "nonce", "acked", "rejected", "requests"):
        assert getattr(subscription, field) == getattr(decoded, field), field
    assert not subscription.owed


def test_other_requests_are_not_taken_for_the_ack() -> None:
    subscription = subscribed(ENDPOINTS, ["a", "b"])
    expected = subscription.expected_ack()
    with_node = xds_pb.DiscoveryRequest.FromString(request(ENDPOINTS, ["a", "b"], "7", "3"))
    with_node.node.id = "client"  # Envoy sends its node with every request
    nack = xds_pb.DiscoveryRequest.FromString(request(ENDPOINTS, ["a", "b"], "", "3"))
    nack.error_detail.message = "no"
    others = [
        request(ENDPOINTS, ["a", "b"], "7", "2"),  # a stale nonce
        request(ENDPOINTS, ["a"], "7", "3"),  # other names
        request(ENDPOINTS, ["b", "a"], "7", "3"),  # the same names in another order
        request(CLUSTER, ["a", "b"], "7", "3"),
        with_node.SerializeToString(),
        nack.SerializeToString(),
    ]
    assert expected not in others
    # A new response expects a new ACK; the names of a later request shape it.
    subscription.update(xds_pb.DiscoveryRequest.FromString(request(ENDPOINTS, ["c"])), "peer")
    subscription.sending({}, "8", "4")
    assert subscription.expected_ack() == request(ENDPOINTS, ["c"], "8", "4")


def test_nothing_is_expected_before_a_response() -> None:
    subscription = Subscription(ENDPOINTS)
    assert subscription.expected_ack() is None


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xff\xff\xff", "malformed request"),
        (b"\x22\x02\xff\xfe", "malformed request"),  # type_url with invalid UTF-8
        (request("", ["a"]), "type_url is required"),
    ],
)
def test_malformed_requests(raw: bytes, reason: str) -> None:
    with pytest.raises(Malformed, match=reason):
        decode_request(raw)


@pytest.mark.parametrize("size", [1, 2, 127, 128, 300, 20000])
def test_fields_encoded_by_hand_are_protobufs_own(size: int) -> None:
    value = ("é" * size)[:size] if size % 2 else "v" * size
    expected = xds_pb.DiscoveryResponse(version_info=value).SerializeToString()
    assert string_field(xds_pb.DiscoveryResponse.VERSION_INFO_FIELD_NUMBER, value) == expected
