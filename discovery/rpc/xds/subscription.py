"""What one ADS stream has asked for and been sent, per resource type (state of the world).

The xDS rules kept here: a request whose `response_nonce` is not the last one sent for its type
is stale and ignored; a request carrying `error_detail` rejects (NACKs) the last response, which
is logged and never sent again; any other request acknowledges it. A response goes out when the
client asks for a set of names it has not been answered for, or when the resources it follows
change; never twice with the same resources.
"""

from __future__ import annotations

import enum
import logging

from envoy.service.discovery.v3 import discovery_pb2

from discovery.rpc.xds.requests import ack_bytes, shape
from discovery.rpc.xds.resources import CLUSTER, LISTENER

log = logging.getLogger("discovery.xds")

#: Types whose empty first request means every resource (wildcard), as in Envoy's LDS and CDS.
WILDCARD_TYPES = frozenset({LISTENER, CLUSTER})


class Verdict(enum.Enum):
    """How a request relates to the last response of its type."""

    STALE = "stale"
    NEW = "new"  # the first request of its type
    ACK = "ack"
    NACK = "nack"


class Subscription:
    """One resource type of one stream."""

    def __init__(self, type_url: str) -> None:
        self.type_url = type_url
        #: The names asked for; None for every resource of the type.
        self.names: frozenset[str] | None = frozenset()
        #: A response is owed: the client asked for names it was not answered for.
        self.owed = False
        #: The resources (name -> encoded part) of the last response; None before it.
        self.sent: dict[str, bytes] | None = None
        self.version = ""  # of the last response
        self.nonce = ""  # of the last response: requests with another one are stale
        self.acked = ""  # the last version the client accepted
        self.rejected = ""  # the last version the client rejected (never sent again)
        self.requests = 0
        #: The names and type of the last request decoded, as its ACKs repeat them.
        self.shape = b""
        self._ack: bytes | None = None  # the expected ACK of the last response, once asked

    def sending(self, resources: dict[str, bytes], version: str, nonce: str) -> None:
        """A response with `resources` goes out as `version` with `nonce`."""
        self.sent = resources
        self.owed = False
        self.version = version
        self.nonce = nonce
        self._ack = None

    def expected_ack(self) -> bytes | None:
        """The bytes a client sends to acknowledge the last response (see `requests`)."""
        if self._ack is None and self.nonce:
            self._ack = ack_bytes(self.version, self.shape, self.nonce)
        return self._ack

    def acknowledged(self) -> None:
        """Take in the expected ACK (`expected_ack`): what `update` does with it, undecoded."""
        self.acked = self.version
        self.requests += 1

    def update(self, request: discovery_pb2.DiscoveryRequest, peer: object) -> Verdict:
        """Take in a request of this type; `owed` tells whether it needs an answer. `peer`
        names the client in the log (formatted only when a line is logged)."""
        nonce = request.response_nonce
        if nonce and nonce != self.nonce:
            # An answer to an older response: a newer one is on its way to the client, and its
            # ACK or NACK will carry the client's names.
            return Verdict.STALE
        verdict = Verdict.NEW if self.requests == 0 else Verdict.ACK
        if request.HasField("error_detail"):
            verdict = Verdict.NACK
            self.rejected = self.version
            log.warning(
                "xDS client %s rejected %s version %s (keeps %r): %s",
                peer,
                _short(self.type_url),
                self.version,
                request.version_info,
                request.error_detail.message,
            )
        elif nonce:
            self.acked = request.version_info
        self.shape = shape(request)
        self._ack = None
        names = self._names(request)
        if names != self.names or self.requests == 0:
            self.names = names
            self.owed = True
        self.requests += 1
        return verdict

    def _names(self, request: discovery_pb2.DiscoveryRequest) -> frozenset[str] | None:
        names = list(request.resource_names)  # one pass over the message's container
        if "*" in names:
            return None
        if (
            not names
            and self.type_url in WILDCARD_TYPES
            and (self.requests == 0 or self.names is None)
        ):
            return None
        return frozenset(names)

    def next_version(self, revision: int) -> str:
        """The version of the next response: the revision it reflects, made unique per type
        when the same revision is answered twice (a change of the names asked for)."""
        version = str(revision)
        if self.version == version or self.version.startswith(version + "."):
            tail = self.version.rpartition(".")[2] if "." in self.version else "0"
            version = f"{revision}.{int(tail) + 1}"
        return version


def _short(type_url: str) -> str:
    return type_url.rpartition(".")[2]
