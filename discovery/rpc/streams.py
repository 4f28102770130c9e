"""The streaming RPCs of discovery.v1: Watch over the watch hub, KeepAlive over its sessions.

Both are bound as methods of `DiscoveryServicer`, as coroutines that read and write through the
call's context (an async generator would add a step to every message).

Watch messages leave as bytes. A change's event is serialized once (cached on the shared
`WatchEvent`) and every stream that carries it sends those same bytes, so the Watch handler is
registered with a serializer that passes bytes through (`as_bytes`). A message with several
events is the concatenation of the events' encodings and a small header: protobuf appends the
entries of a repeated field that occurs more than once, and fields may come in any order.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Protocol

import grpc

from discovery.core.errors import DiscoveryError
from discovery.core.facade import DiscoveryCore
from discovery.core.keepalive import KeepAliveSession
from discovery.core.metrics import GRPC
from discovery.core.watch.hub import WatchBatch, WatchEvent, WatchSelector
from discovery.rpc.codec import EVENT_TO_PB, InstanceMessages, instance_to_pb
from discovery.rpc.decoding import Malformed, decode
from discovery.rpc.status import authorization, status_for
from discovery.v1 import discovery_pb2 as pb

Context = grpc.aio.ServicerContext[Any, Any]


# -- Watch ------------------------------------------------------------------------------------


def as_bytes(message: bytes | pb.WatchResponse) -> bytes:
    """The Watch response serializer: pre-serialized messages go out untouched."""
    return message if isinstance(message, bytes) else message.SerializeToString()


def _event_field(event: WatchEvent) -> bytes:
    """The event as the `events` entry of a WatchResponse (tag, length, WatchEvent)."""
    message = pb.WatchEvent(
        type=EVENT_TO_PB[event.type],
        instance=instance_to_pb(event.instance),
        revision=event.revision,
    )
    return pb.WatchResponse(events=[message]).SerializeToString()


def _header(revision: int, reset: bool = False, synced: bool = True) -> bytes:
    return pb.WatchResponse(revision=revision, reset=reset, synced=synced).SerializeToString()


def _live_message(event: WatchEvent) -> bytes:
    """The whole message for one live event: the same bytes for every stream that gets it."""
    return event.encoded(_event_field) + _header(event.revision)


def encode_batch(batch: WatchBatch) -> bytes:
    """A serialized WatchResponse for `batch` (encoded once for every stream that sends it)."""
    return batch.encoded(_encode)


def _encode(batch: WatchBatch) -> bytes:
    events = batch.events
    if len(events) == 1 and not batch.reset and batch.synced:
        event = events[0]
        if event.revision == batch.revision:
            return event.encoded(_live_message)
    parts = [event.encoded(_event_field) for event in events]
    parts.append(_header(batch.revision, batch.reset, batch.synced))
    return b"".join(parts)


class StreamServicer(Protocol):
    """What the streaming handlers need of the servicer they are methods of."""

    core: DiscoveryCore
    instance_messages: InstanceMessages

    def malformed(self, method: str, error: Malformed) -> None:
        """Log a request that did not decode (rate-limited)."""


async def watch(servicer: StreamServicer, request: pb.WatchRequest, context: Context) -> None:
    """The Watch RPC: a snapshot (or the history after `start_revision`), then every change.

    A coroutine writing through `context` (not an async generator): one generator step less
    per message, for every watcher of every change.
    """
    core = servicer.core
    try:
        core.check_serving()
        selector = WatchSelector.checked(
            request.service_names, request.healthy_only, request.start_revision
        )
        watcher = core.watch(selector, GRPC)
    except DiscoveryError as exc:
        await context.abort(status_for(exc), exc.message)
    try:
        # Headers first, so a client sees the stream is up even when there is nothing to say.
        await context.send_initial_metadata(())
        while (batch := await watcher.next_batch()) is not None:
            await context.write(encode_batch(batch))
    finally:
        watcher.close()


# -- KeepAlive --------------------------------------------------------------------------------


def _ack(
    session: KeepAliveSession, request: pb.KeepAliveRequest, messages: InstanceMessages
) -> pb.KeepAliveResponse:
    load = request.load_percentage if request.HasField("load_percentage") else None
    ack = pb.KeepAliveResponse(service_name=request.service_name, instance_id=request.instance_id)
    try:
        instance = session.beat(request.service_name, request.instance_id, load, request.detach)
    except DiscoveryError as exc:
        ack.code = status_for(exc).value[0]
        ack.message = exc.message
    else:
        messages.fill(ack.instance, instance)
    return ack


def _refusal(error: Malformed) -> pb.KeepAliveResponse:
    """The ack of a request that did not decode: INVALID_ARGUMENT, and the stream goes on."""
    return pb.KeepAliveResponse(code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message=str(error))


Received = pb.KeepAliveRequest | Malformed


class _Inbox:
    """The requests of one stream, read (and decoded: the method has no deserializer) by a
    task of its own so that the handler can stop waiting for them when shutdown begins; at most
    `limit` are read ahead of the handler."""

    def __init__(self, context: Context, stopping: asyncio.Future[None], limit: int = 64) -> None:
        self._buffer: deque[Received] = deque()
        self._limit = limit
        self._stopping = stopping
        self._ended = False
        self._handler: asyncio.Future[None] | None = None  # the handler waits for requests
        self._pump: asyncio.Future[None] | None = None  # the reader waits for room
        stopping.add_done_callback(self._wake_handler)
        self._reader = asyncio.ensure_future(self._read(context))

    @property
    def stopped(self) -> bool:
        return self._stopping.done()

    def pop(self) -> Received | None:
        """The next request if one is already read (the usual case under load); None when
        none is, or once shutdown began."""
        if not self._buffer or self._stopping.done():
            return None
        if self._pump is not None and not self._pump.done():
            self._pump.set_result(None)
        return self._buffer.popleft()

    async def next(self) -> Received | None:
        """The next request; None when the client has closed its side or shutdown began."""
        while not self._buffer:
            if self._ended or self._stopping.done():
                return None
            self._handler = asyncio.get_running_loop().create_future()
            await self._handler
        return self.pop()

    def close(self) -> None:
        self._stopping.remove_done_callback(self._wake_handler)
        self._reader.cancel()  # only pending when the handler stops first (shutdown, failure)

    async def _read(self, context: Context) -> None:
        # context.read() rather than the request iterator: one async generator less per request.
        eof = grpc.aio.EOF  # type: ignore[attr-defined]  # missing from grpc-stubs
        try:
            while (raw := await context.read()) is not eof:
                try:
                    self._buffer.append(decode(pb.KeepAliveRequest.FromString, raw))
                except Malformed as exc:
                    self._buffer.append(exc)
                self._wake_handler()
                if len(self._buffer) >= self._limit:
                    self._pump = asyncio.get_running_loop().create_future()
                    await self._pump
        finally:
            self._ended = True
            self._wake_handler()

    def _wake_handler(self, _: object = None) -> None:
        handler = self._handler
        if handler is not None and not handler.done():
            handler.set_result(None)


async def keep_alive(
    servicer: StreamServicer,
    requests: AsyncIterator[pb.KeepAliveRequest],
    context: Context,
) -> None:
    """The KeepAlive RPC: one ack per request; when the stream ends, its held instances are
    severed (`KeepAliveSession.close`). Shutdown ends the stream with UNAVAILABLE at once, so
    an open stream never holds up the server's stop.

    A coroutine that reads and writes through `context` (not an async generator over
    `requests`): it spares a generator step per request and per ack.
    """
    sessions = servicer.core.keepalive
    messages = servicer.instance_messages
    try:
        servicer.core.auth.check(authorization(context))
        session = sessions.open()
    except DiscoveryError as exc:
        await context.abort(status_for(exc), exc.message)
    inbox = _Inbox(context, sessions.stopping)
    try:
        while True:
            request = inbox.pop()
            if request is None and (request := await inbox.next()) is None:
                break
            if isinstance(request, Malformed):
                servicer.malformed("KeepAlive", request)
                await context.write(_refusal(request))
                continue
            await context.write(_ack(session, request, messages))
        if inbox.stopped:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "Server is shutting down")
    finally:
        inbox.close()
        session.close()
