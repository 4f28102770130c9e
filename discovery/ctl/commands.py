"""The subcommands: one gRPC call each (a stream for `watch`), printed as a table or as JSON.

Each takes the parsed arguments and a `Context` (the stub, call metadata, output) and returns
nothing; a refusal by the server surfaces as the call's `grpc.aio.AioRpcError`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from discovery.client import Backoff
from discovery.ctl import records, tables
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc


class NotServing(Exception):
    """The server answered its health check with something else than SERVING."""


@dataclass
class Context:
    """What every subcommand needs."""

    channel: grpc.aio.Channel
    metadata: tuple[tuple[str, str], ...]
    json: bool
    timeout: float
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)

    @property
    def stub(self) -> pb_grpc.DiscoveryServiceAsyncStub:
        return pb_grpc.DiscoveryServiceStub(self.channel)

    def emit(self, data: Any, text: str) -> None:
        """Print `data` as one JSON line with --json, else `text`."""
        print(json.dumps(data, ensure_ascii=False) if self.json else text, file=self.out)
        self.out.flush()


Command = Callable[[argparse.Namespace, Context], Awaitable[None]]


async def services(args: argparse.Namespace, ctx: Context) -> None:
    reply = await ctx.stub.ListServices(pb.ListServicesRequest(), timeout=ctx.timeout)
    listing = {s.name: [records.instance(i) for i in s.instances] for s in reply.services}
    every = [record for instances in listing.values() for record in instances]
    text = tables.instances(every, tables.terminal_width()) if every else "No services."
    ctx.emit({"services": listing}, text)


async def get(args: argparse.Namespace, ctx: Context) -> None:
    request = pb.GetServiceRequest(service_name=args.service, healthy_only=args.healthy)
    reply = await ctx.stub.GetService(request, timeout=ctx.timeout)
    found = [records.instance(i) for i in reply.instances]
    text = tables.instances(found, tables.terminal_width()) if found else "No healthy instance."
    ctx.emit({"service_name": reply.service_name or args.service, "instances": found}, text)


async def alerts(args: argparse.Namespace, ctx: Context) -> None:
    reply = await ctx.stub.ListAlerts(pb.ListAlertsRequest(), timeout=ctx.timeout)
    found = [records.alert(a) for a in reply.alerts]
    text = tables.alerts(found, tables.terminal_width()) if found else "No open alerts."
    ctx.emit({"alerts": found}, text)


async def register(args: argparse.Namespace, ctx: Context) -> None:
    request = pb.RegisterRequest(
        service_name=args.service,
        instance_id=args.instance,
        host=args.host,
        port=args.port,
        metadata=dict(args.meta),
    )
    if args.health_endpoint is not None:
        request.health_endpoint = args.health_endpoint  # "" (--no-health-endpoint): heartbeats
    reply = await ctx.stub.Register(request, metadata=ctx.metadata, timeout=ctx.timeout)
    record = records.instance(reply.instance)
    interval = records.seconds(reply.heartbeat_interval.ToTimedelta())
    ttl = records.seconds(reply.ttl.ToTimedelta())
    data = {
        "success": True,
        "message": f"Service {args.service}:{args.instance} registered successfully",
        "instance": record,
        "heartbeat_interval_seconds": interval,
        "ttl_seconds": ttl,
    }
    text = (
        f"Registered {args.service}/{args.instance} at {tables.address(record)} "
        f"({record['status']}; heartbeat every {interval}s, expires {ttl}s after the last one)"
    )
    ctx.emit(data, text)


async def heartbeat(args: argparse.Namespace, ctx: Context) -> None:
    request = pb.HeartbeatRequest(service_name=args.service, instance_id=args.instance)
    if args.load is not None:
        request.load_percentage = args.load
    reply = await ctx.stub.Heartbeat(request, metadata=ctx.metadata, timeout=ctx.timeout)
    record = records.instance(reply.instance)
    data = {"success": True, "message": "Heartbeat updated successfully", "instance": record}
    text = (
        f"Heartbeat of {args.service}/{args.instance} accepted "
        f"({record['status']}, load {tables.load(record)})"
    )
    ctx.emit(data, text)


async def unregister(args: argparse.Namespace, ctx: Context) -> None:
    request = pb.UnregisterRequest(service_name=args.service, instance_id=args.instance)
    await ctx.stub.Unregister(request, metadata=ctx.metadata, timeout=ctx.timeout)
    data = {"success": True, "message": "Service unregistered successfully"}
    ctx.emit(data, f"Unregistered {args.service}/{args.instance}")


async def health(args: argparse.Namespace, ctx: Context) -> None:
    stub = health_pb2_grpc.HealthStub(ctx.channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=ctx.timeout)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    ctx.emit({"status": status}, status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        raise NotServing(status)


async def watch(args: argparse.Namespace, ctx: Context) -> None:
    """Print every change until interrupted. A broken stream is resumed from the last revision
    printed, so no change is missed or repeated; a snapshot is printed only once it is whole.
    A server that cannot be reached at the start is an error like for any other command."""
    revision = 0
    backoff = Backoff(maximum=2.0)
    followed = False
    while True:
        request = pb.WatchRequest(
            service_names=args.services, healthy_only=args.healthy, start_revision=revision
        )
        try:
            revision = await _follow(ctx, request, backoff)
            reason = "the server ended the stream"
        except _Lost as lost:
            revision, reason = lost.revision, lost.reason
            if not followed and not lost.answered:
                raise lost.cause from None
        followed = True
        delay = backoff.next()
        print(f"discoveryctl: {reason}; reconnecting in {delay:.1f}s", file=ctx.err, flush=True)
        await asyncio.sleep(delay)


class _Lost(Exception):
    """The stream broke: from which revision to go on, and whether the server had answered."""

    def __init__(self, cause: Exception, reason: str, revision: int, answered: bool) -> None:
        super().__init__(reason)
        self.cause = cause
        self.reason = reason
        self.revision = revision
        self.answered = answered


_RETRIED = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)


async def _follow(ctx: Context, request: pb.WatchRequest, backoff: Backoff) -> int:
    """Print the stream's events; returns the revision printed up to, when the stream ends,
    and raises `_Lost` when it breaks."""
    revision = request.start_revision
    answered = False
    pending: list[dict[str, Any]] | None = None
    call: grpc.aio.UnaryStreamCall[pb.WatchRequest, pb.WatchResponse] = ctx.stub.Watch(request)
    try:
        while True:
            async with asyncio.timeout(30):  # the server sends progress at least every 10 s
                message = await call.read()
            if not isinstance(message, pb.WatchResponse):
                return revision
            answered = True
            backoff.reset()
            if message.reset:
                pending = [records.event("RESET", message.revision)]
            lines = pending if pending is not None else []
            lines.extend(
                records.event(records.EVENT[e.type], e.revision, e.instance) for e in message.events
            )
            if message.synced:
                if pending is not None:
                    lines.append(records.event("SYNCED", message.revision))
                    pending = None
                for data in lines:
                    ctx.emit(data, tables.event_line(data))
                revision = message.revision
    except grpc.aio.AioRpcError as exc:
        if exc.code() not in _RETRIED:
            raise
        raise _Lost(exc, exc.code().name, revision, answered) from None
    except TimeoutError as exc:
        raise _Lost(exc, "no word from the server for 30s", revision, answered) from None
    finally:
        call.cancel()


COMMANDS: dict[str, Command] = {
    "services": services,
    "get": get,
    "watch": watch,
    "register": register,
    "heartbeat": heartbeat,
    "unregister": unregister,
    "alerts": alerts,
    "health": health,
}
