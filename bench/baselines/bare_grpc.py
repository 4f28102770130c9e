"""A bare grpc.aio DiscoveryService: a plain dict, no auth, no validation, no registry logic.

- `Register` stores the instance and fans one change out to every open `Watch` stream: the
  WatchResponse is serialized once and the same bytes are put on each stream's mailbox (a
  deque and a wake-up future: the leanest queue asyncio allows).
- `Heartbeat` looks the instance up and answers it.
- `Watch` sends one synced message, then every change.

It is the framework's own ceiling for the gRPC figures: whatever this server cannot do on one
core, no server built on grpc.aio can.

    python -m bench.baselines.bare_grpc     # logs "gRPC listening on 127.0.0.1:PORT"
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import grpc
import uvloop

from bench.baselines import settle_heap
from discovery.v1 import discovery_pb2 as pb

SERVICE = "discovery.v1.DiscoveryService"
# What lets the server take a burst of calls and streams (the project's server sets the same).
OPTIONS = [
    ("grpc.so_reuseport", 0),
    ("grpc.server.max_pending_requests", 50_000),
    ("grpc.server.max_pending_requests_hard_limit", 50_000),
]


class Mailbox:
    """A stream's queue at its leanest: a deque, and a future to wake the stream when it waits
    (an asyncio.Queue does more per message: getter lists, task-done counts)."""

    __slots__ = ("items", "waiter")

    def __init__(self) -> None:
        self.items: deque[bytes] = deque()
        self.waiter: asyncio.Future[None] | None = None

    def put(self, message: bytes) -> None:
        self.items.append(message)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def get(self) -> bytes:
        while not self.items:
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        return self.items.popleft()


class Bare:
    def __init__(self) -> None:
        self.store: dict[tuple[str, str], pb.Instance] = {}
        self.watchers: set[Mailbox] = set()
        self.revision = 0

    async def register(self, request: pb.RegisterRequest, context: Any) -> pb.RegisterResponse:
        instance = pb.Instance(
            service_name=request.service_name,
            instance_id=request.instance_id,
            host=request.host,
            port=request.port,
            health_endpoint=request.health_endpoint,
            status=pb.HEALTH_STATUS_HEALTHY,
            metadata=request.metadata,
        )
        instance.registered_at.GetCurrentTime()
        self.store[(request.service_name, request.instance_id)] = instance
        self.revision += 1
        event = pb.WatchEvent(type=pb.EVENT_TYPE_PUT, instance=instance, revision=self.revision)
        message = pb.WatchResponse(
            revision=self.revision, events=[event], synced=True
        ).SerializeToString()
        for mailbox in self.watchers:
            mailbox.put(message)
        return pb.RegisterResponse(instance=instance)

    async def heartbeat(self, request: pb.HeartbeatRequest, context: Any) -> pb.HeartbeatResponse:
        instance = self.store[(request.service_name, request.instance_id)]
        instance.last_heartbeat.GetCurrentTime()
        return pb.HeartbeatResponse(instance=instance)

    async def watch(self, request: pb.WatchRequest, context: Any) -> AsyncIterator[bytes]:
        mailbox = Mailbox()
        self.watchers.add(mailbox)
        try:
            await context.send_initial_metadata(())
            yield pb.WatchResponse(
                revision=self.revision, reset=True, synced=True
            ).SerializeToString()
            while True:
                yield await mailbox.get()
        finally:
            self.watchers.discard(mailbox)


def handlers(bare: Bare) -> grpc.GenericRpcHandler[Any, Any]:
    unary = grpc.unary_unary_rpc_method_handler
    methods = {
        "Register": unary(
            bare.register,
            request_deserializer=pb.RegisterRequest.FromString,
            response_serializer=pb.RegisterResponse.SerializeToString,
        ),
        "Heartbeat": unary(
            bare.heartbeat,
            request_deserializer=pb.HeartbeatRequest.FromString,
            response_serializer=pb.HeartbeatResponse.SerializeToString,
        ),
        # Already bytes: no serializer.
        "Watch": grpc.unary_stream_rpc_method_handler(
            bare.watch, request_deserializer=pb.WatchRequest.FromString
        ),
    }
    return grpc.method_handlers_generic_handler(SERVICE, methods)


async def main() -> None:
    server = grpc.aio.server(options=OPTIONS)
    server.add_generic_rpc_handlers((handlers(Bare()),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    settle_heap()
    print(f"gRPC listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0)


if __name__ == "__main__":
    uvloop.run(main())
