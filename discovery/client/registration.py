"""`DiscoveryClient`: register instances and keep them alive over one KeepAlive stream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import grpc

from discovery.client._common import (
    Backoff,
    ServiceInstance,
    TLSFiles,
    auth_metadata,
    open_channel,
    stop_task,
)
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc

log = logging.getLogger("discovery.client")

Key = tuple[str, str]
_KeepAliveCall = grpc.aio.StreamStreamCall[pb.KeepAliveRequest, pb.KeepAliveResponse]
_NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]
_INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]


class _StreamEnded(Exception):
    """The server ended the KeepAlive stream (it does so when it shuts down)."""


@dataclass(slots=True)
class _Registration:
    request: pb.RegisterRequest
    load: float | None = None


class DiscoveryClient:
    """Registers this process's instances and keeps them alive until `close()`.

    Heartbeats go over one KeepAlive stream (unary Heartbeat calls when the server lacks it), so
    the server marks the instances unhealthy the moment this process dies or loses its
    connection. The client reconnects by itself with jittered exponential backoff, and registers
    again whatever the server has forgotten (a restarted server answers NOT_FOUND).

        async with DiscoveryClient("127.0.0.1:50051", secret="s3cret") as client:
            await client.register("game", "game-1", "10.0.0.5", 8080, health_endpoint=None)
            client.set_load("game", "game-1", 0.42)  # sent with the next heartbeat
            ...  # serve
        # leaving the block unregisters game-1

    `heartbeat_interval` overrides the pace (default: half the interval the server asks for).
    Pass `channel=` to share a channel; the client then leaves it open on `close()`.

    TLS: `ca_file` (the CA that signed the server's certificate; the system's roots when only
    `tls=True` is given) and, for a server that requires client certificates, `cert_file` and
    `key_file` (PEM). Without any of them the channel is plain.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        secret: str | None = None,
        channel: grpc.aio.Channel | None = None,
        heartbeat_interval: float | None = None,
        backoff: Backoff | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        tls: bool = False,
        keepalive: bool = True,
    ) -> None:
        if channel is None and target is None:
            raise ValueError("DiscoveryClient needs a target or a channel")
        self._own_channel = channel is None
        self._channel = (
            channel
            if channel is not None
            else open_channel(str(target), TLSFiles.of(ca_file, cert_file, key_file, tls))
        )
        self._stub = pb_grpc.DiscoveryServiceStub(self._channel)
        self._metadata = auth_metadata(secret)
        self._interval = heartbeat_interval
        self._backoff = backoff or Backoff()
        self._use_stream = keepalive
        self._registrations: dict[Key, _Registration] = {}
        self._outbox: asyncio.Queue[pb.KeepAliveRequest | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.connected = asyncio.Event()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def registrations(self) -> list[Key]:
        """The (service_name, instance_id) pairs kept alive."""
        return list(self._registrations)

    async def register(
        self,
        service_name: str,
        instance_id: str,
        host: str,
        port: int,
        *,
        health_endpoint: str | None = "/health",
        metadata: Mapping[str, str] | None = None,
    ) -> ServiceInstance:
        """Register an instance (`health_endpoint=None`: heartbeat-only) and keep it alive.

        Raises `grpc.aio.AioRpcError` when the server refuses it (INVALID_ARGUMENT, ...).
        """
        request = pb.RegisterRequest(
            service_name=service_name,
            instance_id=instance_id,
            host=host,
            port=port,
            health_endpoint=health_endpoint or "",
            metadata=dict(metadata or {}),
        )
        reply = await self._stub.Register(request, metadata=self._metadata)
        if self._interval is None:
            self._interval = max(0.05, reply.heartbeat_interval.ToTimedelta().total_seconds() / 2)
        self._registrations[(service_name, instance_id)] = _Registration(request)
        self._beat(service_name, instance_id)  # binds it to the stream at once
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="discovery-keepalive")
        return ServiceInstance.from_pb(reply.instance)

    def set_load(self, service_name: str, instance_id: str, load: float | None) -> None:
        """Report `load` (0..1) with every heartbeat from the next one on; None stops it."""
        self._registrations[(service_name, instance_id)].load = load

    async def unregister(self, service_name: str, instance_id: str) -> None:
        """Stop keeping the instance alive and remove it from the server."""
        self._registrations.pop((service_name, instance_id), None)
        try:
            await self._stub.Unregister(
                pb.UnregisterRequest(service_name=service_name, instance_id=instance_id),
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise

    async def close(self, *, unregister: bool = True, wait: float = 2.0) -> None:
        """Stop. With `unregister` (default) every instance is removed; without it they are
        detached and left as they are, living on by TTL (for a restart that keeps its ids)."""
        if self._closing:
            return
        self._closing = True
        keys = list(self._registrations)
        if unregister:
            await asyncio.gather(*(self._unregister_within(key, wait) for key in keys))
        else:
            for service_name, instance_id in keys:
                self._outbox.put_nowait(
                    pb.KeepAliveRequest(
                        service_name=service_name, instance_id=instance_id, detach=True
                    )
                )
        self._outbox.put_nowait(None)  # ends the stream cleanly
        if self._task is not None:
            failure = await stop_task(self._task, wait)
            if failure is not None:
                log.warning("KeepAlive stopped with %r", failure)
        if self._own_channel:
            await self._channel.close(None)

    # -- internals --------------------------------------------------------------------------

    async def _unregister_within(self, key: Key, wait: float) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.TimeoutError):
            await asyncio.wait_for(self.unregister(*key), wait)

    def _beat(self, service_name: str, instance_id: str) -> None:
        registration = self._registrations.get((service_name, instance_id))
        if registration is None or self._closing:
            return
        request = pb.KeepAliveRequest(service_name=service_name, instance_id=instance_id)
        if registration.load is not None:
            request.load_percentage = registration.load
        self._outbox.put_nowait(request)

    def _beat_all(self) -> None:
        # Skip a round when the last one has not gone out yet: the stream is stuck, and
        # queueing more would only grow memory.
        if self._outbox.qsize() <= len(self._registrations):
            for key in list(self._registrations):
                self._beat(*key)

    async def _run(self) -> None:
        ticker = asyncio.create_task(self._tick(), name="discovery-heartbeat-ticker")
        try:
            while not self._closing or not self._outbox.empty():
                try:
                    if self._use_stream:
                        await self._stream_session()
                    else:
                        await self._unary_session()
                    if self._closing:
                        return
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.UNIMPLEMENTED and self._use_stream:
                        log.info("Server has no KeepAlive: falling back to unary heartbeats")
                        self._use_stream = False
                        continue
                    log.warning("Discovery connection lost (%s); reconnecting", exc.code().name)
                except _StreamEnded:
                    log.info("The server ended the KeepAlive stream; reconnecting")
                except Exception:  # keep the registrations alive whatever went wrong
                    log.exception("KeepAlive failed; reconnecting")
                self.connected.clear()
                if self._closing:
                    return
                await asyncio.sleep(self._backoff.next())
        finally:
            ticker.cancel()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._interval or 1.0)
            self._beat_all()

    async def _stream_session(self) -> None:
        # grpc-stubs wants a request iterator; an aio call is written to instead.
        call = self._stub.KeepAlive(metadata=self._metadata)  # type: ignore[call-arg]
        reader = asyncio.create_task(self._read_acks(call))
        try:
            self._beat_all()  # a new stream holds nothing yet
            while True:
                request = await self._next_request(reader)
                if request is None:
                    await call.done_writing()
                    await reader  # the server ends the stream once it has answered
                    return
                await call.write(request)
        finally:
            reader.cancel()
            call.cancel()

    async def _next_request(self, reader: asyncio.Task[None]) -> pb.KeepAliveRequest | None:
        """The next request to send; raises when the stream broke meanwhile."""
        if self._outbox.empty():
            getter = asyncio.ensure_future(self._outbox.get())
            await asyncio.wait((getter, reader), return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                await reader  # raises the stream's error, if it has one
                raise _StreamEnded()
            return getter.result()
        return self._outbox.get_nowait()

    async def _read_acks(self, call: _KeepAliveCall) -> None:
        async for ack in call:
            if ack.code == 0:
                self._backoff.reset()
                self.connected.set()
            elif ack.code == _NOT_FOUND:
                await self._reregister((ack.service_name, ack.instance_id))
            elif ack.code == _INVALID:
                log.warning(
                    "Heartbeat of %s:%s refused: %s", ack.service_name, ack.instance_id, ack.message
                )

    async def _reregister(self, key: Key) -> None:
        registration = self._registrations.get(key)
        if registration is None or self._closing:
            return
        log.info("Server forgot %s:%s; registering it again", *key)
        try:
            await self._stub.Register(registration.request, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            # Refused (limits, a new secret...): the stream and the other instances on it go
            # on; the next NOT_FOUND heartbeat tries again.
            log.warning("Registering %s:%s again failed: %s", *key, exc.code().name)
            return
        self._beat(*key)

    async def _unary_session(self) -> None:
        self._beat_all()
        while True:
            request = await self._outbox.get()
            if request is None:
                return
            if request.detach:
                continue
            heartbeat = pb.HeartbeatRequest(
                service_name=request.service_name, instance_id=request.instance_id
            )
            if request.HasField("load_percentage"):
                heartbeat.load_percentage = request.load_percentage
            try:
                await self._stub.Heartbeat(heartbeat, metadata=self._metadata)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    self._outbox.put_nowait(request)  # retried after the reconnect
                    raise
                await self._reregister((request.service_name, request.instance_id))
                continue
            self._backoff.reset()
            self.connected.set()
