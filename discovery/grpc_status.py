"""The one mapping from the core's error tree to gRPC status codes."""

from __future__ import annotations

import grpc

from discovery.errors import (
    AuthError,
    DiscoveryError,
    InvalidArgument,
    LimitExceeded,
    NotFound,
    ShuttingDown,
)

STATUS_FOR: list[tuple[type[DiscoveryError], grpc.StatusCode]] = [
    (AuthError, grpc.StatusCode.UNAUTHENTICATED),
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (LimitExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ShuttingDown, grpc.StatusCode.UNAVAILABLE),
]


def status_for(exc: DiscoveryError) -> grpc.StatusCode:
    """The gRPC status code of a core error."""
    for kind, code in STATUS_FOR:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.UNKNOWN
