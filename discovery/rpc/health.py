"""grpc.health.v1.Health: SERVING while up, NOT_SERVING once shutdown begins.

Unlike the reference servicer, a Watch stream ends (status OK) right after it has reported
NOT_SERVING, so open health watchers never hold up a graceful stop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

Status = int  # health_pb2.HealthCheckResponse.ServingStatus values
Context = grpc.aio.ServicerContext[Any, Any]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

#: The name grpc.health.v1 is served under, for reflection.
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class HealthService(health_pb2_grpc.HealthServicer):  # type: ignore[misc]  # untyped base
    """Serving status per service name; `""` is the server as a whole."""

    def __init__(self, services: Iterable[str]) -> None:
        self._status: dict[str, Status] = dict.fromkeys(("", *services), SERVING)
        self._changed = asyncio.Event()
        self._stopping = False

    def shutdown(self) -> None:
        """Report NOT_SERVING for every service, for good; Watch streams end after saying so."""
        self._stopping = True
        for name in self._status:
            self._status[name] = NOT_SERVING
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: Context
    ) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def List(
        self, request: health_pb2.HealthListRequest, context: Context
    ) -> health_pb2.HealthListResponse:
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in self._status.items()
            }
        )

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: Context
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last: Status | None = None
        while True:
            changed = self._changed
            status = self._status.get(request.service, SERVICE_UNKNOWN)
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            if self._stopping:
                return
            await changed.wait()
