"""What every gRPC handler shares: the one mapping from the core's error tree to status codes,
and the credentials a call carries."""

from __future__ import annotations

from typing import Any

import grpc

from discovery.core.errors import (
    AuthError,
    DiscoveryError,
    InvalidArgument,
    LimitExceeded,
    NotFound,
    ShuttingDown,
    StoreUnavailable,
)

STATUS_FOR: list[tuple[type[DiscoveryError], grpc.StatusCode]] = [
    (AuthError, grpc.StatusCode.UNAUTHENTICATED),
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (LimitExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ShuttingDown, grpc.StatusCode.UNAVAILABLE),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
]


def status_for(exc: DiscoveryError) -> grpc.StatusCode:
    """The gRPC status code of a core error."""
    for kind, code in STATUS_FOR:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.UNKNOWN


def authorization(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The `authorization` metadata of a call, if any."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode("latin-1")
    return None
