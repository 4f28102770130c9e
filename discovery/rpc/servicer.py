"""The discovery.v1 gRPC adapter: the servicer (writes check the secret) and the server builder.

Translation only: requests become calls on `DiscoveryCore`, core errors become status codes
(one mapping, `discovery.rpc.status`), and instances become protobuf messages
(`discovery.rpc.codec`). The streaming RPCs live in `discovery.rpc.streams`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer as AsyncReflectionServicer

from discovery.core import validation
from discovery.core.errors import DiscoveryError
from discovery.core.facade import DiscoveryCore
from discovery.core.metrics import GRPC
from discovery.core.model import DEFAULT_HEALTH_ENDPOINT
from discovery.rpc.codec import (
    InstanceMessages,
    alert_to_pb,
    duration,
    fill_instance,
    instance_to_pb,
)
from discovery.rpc.decoding import DecodingRegistrar, Malformed
from discovery.rpc.health import HEALTH_SERVICE_NAME, HealthService
from discovery.rpc.status import STATUS_FOR, authorization, status_for
from discovery.rpc.streams import as_bytes, keep_alive, watch
from discovery.rpc.xds import SERVICE_NAME as XDS_SERVICE_NAME
from discovery.rpc.xds import add_xds_service
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["DiscoveryService"].full_name

#: gRPC queues at most 1,000 calls (3,000 at worst) that arrived before the server took them up.
#: When thousands of watchers reconnect at once (a restart), calls past that were seen to hang on
#: the client; a larger queue lets the burst through.
BURST_OPTIONS = [
    ("grpc.server.max_pending_requests", 50_000),
    ("grpc.server.max_pending_requests_hard_limit", 50_000),
]

__all__ = ["STATUS_FOR", "DiscoveryServicer", "authorization", "build_server", "status_for"]

Context = grpc.aio.ServicerContext[Any, Any]
Request = TypeVar("Request")
Response = TypeVar("Response")
Handler = Callable[[Any, Request, Context], Awaitable[Response]]
SyncHandler = Callable[[Any, Request, Context], Response]


def _unary(
    *, write: bool
) -> Callable[[SyncHandler[Request, Response]], Handler[Request, Response]]:
    """Make a unary RPC of a plain method: writes check the secret first (the same check as
    REST's), and core errors become the matching status.

    The check runs in the handler rather than in a server interceptor: grpc.aio runs an
    interceptor through extra coroutines on every call, reads included, which cost about a
    sixth of the unary throughput. The handler's time goes into the method's histogram.
    """

    def wrap(method: SyncHandler[Request, Response]) -> Handler[Request, Response]:
        name = method.__name__

        @functools.wraps(method)
        async def handler(self: Any, request: Request, context: Context) -> Response:
            started = time.perf_counter()
            try:
                if write:
                    self.core.auth.check(authorization(context))
                return method(self, request, context)
            except DiscoveryError as exc:
                await context.abort(status_for(exc), exc.message)
                raise  # abort() raises; this line only satisfies the type checker
            finally:
                self.timings[name].observe(time.perf_counter() - started)

        return handler

    return wrap


def _durable(method: Handler[Request, Response]) -> Handler[Request, Response]:
    """Make a unary write RPC of a coroutine method (one that waits for the store): the secret
    is checked first, core errors become the matching status, and the time is recorded."""
    name = method.__name__

    @functools.wraps(method)
    async def handler(self: Any, request: Request, context: Context) -> Response:
        started = time.perf_counter()
        try:
            self.core.auth.check(authorization(context))
            return await method(self, request, context)
        except DiscoveryError as exc:
            await context.abort(status_for(exc), exc.message)
            raise  # abort() raises; this line only satisfies the type checker
        finally:
            self.timings[name].observe(time.perf_counter() - started)

    return handler


#: The unary RPCs, timed by `discovery_request_duration_seconds{protocol="grpc"}`.
UNARY_METHODS = (
    "Register",
    "Heartbeat",
    "Unregister",
    "ListServices",
    "GetService",
    "ListAlerts",
)


class DiscoveryServicer(pb_grpc.DiscoveryServiceServicer):
    """discovery.v1.DiscoveryService over a `DiscoveryCore`."""

    def __init__(self, core: DiscoveryCore) -> None:
        self.core = core
        self.timings = {name: core.metrics.request_histogram(GRPC, name) for name in UNARY_METHODS}
        self.instance_messages = InstanceMessages()
        self.registrar: DecodingRegistrar | None = None  # set when registered on a server
        self._interval = duration(core.settings.heartbeat_interval)
        self._ttl = duration(core.settings.registration_ttl)

    @_durable
    async def Register(self, request: pb.RegisterRequest, context: Context) -> pb.RegisterResponse:
        endpoint = (
            request.health_endpoint
            if request.HasField("health_endpoint")
            else DEFAULT_HEALTH_ENDPOINT
        )
        registration = validation.registration(
            request.service_name,
            request.instance_id,
            request.host,
            request.port,
            endpoint or None,
            dict(request.metadata),  # a plain dict reads far faster than the map
        )
        outcome = await self.core.register(registration, GRPC)
        response = pb.RegisterResponse(heartbeat_interval=self._interval, ttl=self._ttl)
        fill_instance(response.instance, outcome.instance)
        return response

    @_unary(write=True)
    def Heartbeat(self, request: pb.HeartbeatRequest, context: Context) -> pb.HeartbeatResponse:
        load = validation.heartbeat(
            request.service_name,
            request.instance_id,
            request.load_percentage if request.HasField("load_percentage") else None,
        )
        instance = self.core.heartbeat(request.service_name, request.instance_id, load, GRPC)
        response = pb.HeartbeatResponse()
        self.instance_messages.fill(response.instance, instance)
        return response

    @_durable
    async def Unregister(
        self, request: pb.UnregisterRequest, context: Context
    ) -> pb.UnregisterResponse:
        await self.core.unregister(request.service_name, request.instance_id, GRPC)
        return pb.UnregisterResponse()

    @_unary(write=False)
    def ListServices(
        self, request: pb.ListServicesRequest, context: Context
    ) -> pb.ListServicesResponse:
        core = self.core
        return pb.ListServicesResponse(
            services=[
                pb.Service(name=name, instances=[instance_to_pb(i) for i in instances])
                for name, instances in core.services().items()
            ],
            revision=core.revision,
        )

    @_unary(write=False)
    def GetService(self, request: pb.GetServiceRequest, context: Context) -> pb.GetServiceResponse:
        core = self.core
        instances = core.instances(request.service_name)
        if request.healthy_only:
            instances = [i for i in instances if i.healthy]
        return pb.GetServiceResponse(
            service_name=request.service_name,
            instances=[instance_to_pb(i) for i in instances],
            revision=core.revision,
        )

    @_unary(write=False)
    def ListAlerts(self, request: pb.ListAlertsRequest, context: Context) -> pb.ListAlertsResponse:
        return pb.ListAlertsResponse(alerts=[alert_to_pb(a) for a in self.core.alerts()])

    def malformed(self, method: str, error: Malformed) -> None:
        """Log a request that did not decode (at most once per interval)."""
        if self.registrar is not None:
            self.registrar.malformed(method, error)

    # The streaming RPCs (discovery.rpc.streams), bound as methods: coroutines that read and
    # write through their context; Watch writes pre-serialized bytes (`build_server`).
    KeepAlive = keep_alive  # type: ignore[assignment]
    Watch = watch  # type: ignore[assignment]


def build_server(
    core: DiscoveryCore,
    servicer: pb_grpc.DiscoveryServiceServicer | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> tuple[grpc.aio.Server, HealthService]:
    """A grpc.aio server (not started, no port) with the discovery, xDS (ADS), health and
    reflection services.

    Every method decodes its own request (`discovery.rpc.decoding`: a malformed one gets
    INVALID_ARGUMENT); Watch's serializer passes bytes through, because its messages are
    serialized once and shared by every stream. `options` are more grpc server options
    (connection limits and keepalive, from the composition root). Call inside the running
    event loop.
    """
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            *BURST_OPTIONS,
            *options,
        ],
    )
    registrar = DecodingRegistrar(
        server, core.settings.client_error_log_interval, serializers={"Watch": as_bytes}
    )
    servicer = servicer or DiscoveryServicer(core)
    if isinstance(servicer, DiscoveryServicer):
        servicer.registrar = registrar
    # The generated registrations only call the two add_* methods the registrar provides.
    target = cast(grpc.aio.Server, registrar)
    pb_grpc.add_DiscoveryServiceServicer_to_server(servicer, target)
    health = HealthService([SERVICE_NAME])
    health_pb2_grpc.add_HealthServicer_to_server(health, target)
    # ADS reads decoded requests through its context: registered as it is (grpc decodes them).
    add_xds_service(server, core)
    names = [SERVICE_NAME, XDS_SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME]
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        AsyncReflectionServicer(names), target
    )
    return server, health
