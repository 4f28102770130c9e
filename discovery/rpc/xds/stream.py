"""One ADS stream (StreamAggregatedResources, state of the world).

Two parts: a reader task takes the client's requests (`_read`: an expected ACK is recognised by
its bytes, anything else decoded, and a request that does not decode ends the stream with
INVALID_ARGUMENT; see `requests`); the handler's own task (`_pump`) takes the messages of a
watcher on the services the stream asks for into a `Mirror`.
Both then `flush`, which sends, per type, the resources that changed since the last response
(under a lock, so responses leave one at a time and in order).

A slow client holds up only its own stream: while a write waits, its watcher's queue fills,
drops its backlog past the hub's limit (`WATCH_MAX_BACKLOG`) and owes a reset snapshot, from
which the mirror is rebuilt. Names asked for later
reopen the watcher on the new set; nothing is answered until its snapshot has been taken in, so
an answer never calls a service absent that merely was not watched yet.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from discovery.core.errors import DiscoveryError
from discovery.core.facade import DiscoveryCore
from discovery.core.watch.events import WatchSelector
from discovery.core.watch.queue import Watcher
from discovery.rpc.decoding import Malformed
from discovery.rpc.xds.dns import DnsCache
from discovery.rpc.xds.mirror import Mirror
from discovery.rpc.xds.requests import decode_request
from discovery.rpc.xds.resources import (
    CLUSTER,
    ENDPOINTS,
    LISTENER,
    SERVED_TYPES,
    ResourceCache,
    header,
)
from discovery.rpc.xds.subscription import Subscription, Verdict

log = logging.getLogger("discovery.xds")

Context = grpc.aio.ServicerContext[Any, Any]
#: Told of a request that did not decode (it logs, rate-limited).
Refused = Callable[[Malformed], None]
_EOF = grpc.aio.EOF  # type: ignore[attr-defined]  # missing from grpc-stubs


class AdsStream:
    """The state of one StreamAggregatedResources call."""

    def __init__(
        self,
        core: DiscoveryCore,
        cache: ResourceCache,
        dns: DnsCache,
        context: Context,
        refused: Refused = lambda error: None,
    ) -> None:
        self.core = core
        self.cache = cache
        self.dns = dns
        self.context = context
        self.refused = refused
        self.peer = context.peer()
        self.node = ""
        self.subscriptions: dict[str, Subscription] = {}
        self.mirror = Mirror()
        self.revision = core.revision
        # The services watched: None for all of them; the watcher and whether its snapshot
        # is in the mirror.
        self.watched: frozenset[str] | None = frozenset()
        self.watcher: Watcher | None = None
        self.synced = True
        #: Set when the stream is to end from the server's side: shutdown, or `failure`.
        self.ended = asyncio.Event()
        self.failure: BaseException | None = None
        self._lock = asyncio.Lock()
        self._watching = asyncio.Event()
        self._nonce = 0
        self._dns_flush: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Serve the stream until the client closes it or the server shuts down.

        The handler's own task runs the pump (it does the writes of every change); a task of
        the stream reads the client's requests.
        """
        self.dns.subscribe(self._on_dns)
        reader = asyncio.ensure_future(self._read())
        reader.add_done_callback(self._on_reader_done)
        try:
            await self._pump()
            if reader.done():
                reader.result()  # the client closed its side, or a flush failed
            elif self.failure is not None:
                raise self.failure
            else:
                await self.context.abort(grpc.StatusCode.UNAVAILABLE, "Server is shutting down")
        except Malformed as exc:
            # Ended here, in the handler's task: the status must not race the pump's writes.
            await self.context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        finally:
            self.dns.unsubscribe(self._on_dns)
            for task in (reader, self._dns_flush):
                if task is not None:
                    task.cancel()
            if self.watcher is not None:
                self.watcher.close()

    def end(self) -> None:
        """End the stream from the server's side (shutdown): the client gets UNAVAILABLE."""
        self.ended.set()
        self._watching.set()  # wakes the pump if it waits for a watcher
        if self.watcher is not None:
            self.watcher.end()  # wakes the pump if it waits for a change

    def _on_reader_done(self, reader: asyncio.Future[None]) -> None:
        self.end()

    async def _read(self) -> None:
        context = self.context
        subscriptions = self.subscriptions.values()
        while (raw := await context.read()) is not _EOF:
            for subscription in subscriptions:
                if raw == subscription.expected_ack():
                    subscription.acknowledged()
                    break
            else:
                try:
                    request = decode_request(raw)
                except Malformed as exc:
                    self.refused(exc)
                    raise
                await self._on_request(request)

    async def _on_request(self, request: discovery_pb2.DiscoveryRequest) -> None:
        if not self.node and request.HasField("node"):
            self.node = request.node.id or "?"
            log.info("xDS stream from %s (node %r)", self.peer, self.node)
        type_url = request.type_url
        subscription = self.subscriptions.get(type_url)
        if subscription is None:
            subscription = self.subscriptions[type_url] = Subscription(type_url)
        verdict = subscription.update(request, self)
        if verdict is Verdict.STALE or not subscription.owed:
            return
        self._rewatch()
        if self.synced:
            await self.flush()

    def _rewatch(self) -> None:
        """Watch the union of the names asked for (every service if any type asks for all)."""
        wanted: set[str] = set()
        everything = False
        for subscription in self.subscriptions.values():
            if subscription.type_url not in SERVED_TYPES:
                continue
            if subscription.names is None:
                everything = True
                break
            wanted.update(subscription.names)
        watched = None if everything else frozenset(wanted)
        if watched == self.watched:
            return
        old = self.watcher
        self.watched = watched
        self.watcher = None
        self.mirror.clear()
        if old is not None:
            old.end()  # wakes the pump, which moves on to the new watcher
            old.close()
        if watched is not None and not watched:
            self.synced = True
            return
        try:
            self.watcher = self.core.watch(WatchSelector(watched or frozenset()))
        except DiscoveryError:
            self.end()  # shutting down
            return
        self.synced = False
        self._watching.set()

    async def _guarded(self, work: Awaitable[None]) -> None:
        """Run background work of the stream; a failure ends the stream with it."""
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("xDS stream from %s failed", self.peer)
            self.failure = exc
            self.end()

    async def _pump(self) -> None:
        """Take in the watcher's messages and send what they change, until the stream ends."""
        while not self.ended.is_set():
            watcher = self.watcher
            if watcher is None:
                # Nothing watched right now: wait for the reader to open a watcher.
                self._watching.clear()
                await self._watching.wait()
                continue
            batch = await watcher.next_batch()
            if batch is None:
                if watcher is self.watcher:
                    self.end()  # the hub is closing (shutdown)
                continue  # else replaced by a watcher on other names
            if batch.is_progress:
                continue
            if batch.reset and not batch.synced:
                self.synced = False  # a snapshot in several messages: answer after the last
            self.mirror.apply(batch)
            self.revision = max(self.revision, batch.revision)
            if batch.synced:
                self.synced = True
                await self.flush()

    def _on_dns(self) -> None:
        if self._dns_flush is None or self._dns_flush.done():
            self._dns_flush = asyncio.ensure_future(self._guarded(self.flush()))

    async def flush(self) -> None:
        """Send every type whose resources changed, or whose client awaits an answer."""
        async with self._lock:
            if not self.synced:
                return
            for subscription in list(self.subscriptions.values()):
                if subscription.requests == 0:
                    continue
                resources = self._resources(subscription)
                if resources == subscription.sent and not subscription.owed:
                    continue
                await self._send(subscription, resources)

    def _resources(self, subscription: Subscription) -> dict[str, bytes]:
        mirror, cache = self.mirror, self.cache
        names = subscription.names
        present = mirror.services if names is None else [n for n in names if mirror.exists(n)]
        type_url = subscription.type_url
        if type_url == LISTENER:
            return {name: cache.listener(name) for name in present}
        if type_url == CLUSTER:
            return {name: cache.cluster(name) for name in present}
        if type_url == ENDPOINTS:
            return {name: mirror.assignment(name, self.dns, cache) for name in present}
        return {}  # a type this server has no resources of (RDS: routes are inline)

    def __str__(self) -> str:
        """How log lines name the stream's client."""
        return f"{self.peer} (node {self.node!r})"

    async def _send(self, subscription: Subscription, resources: dict[str, bytes]) -> None:
        self._nonce += 1
        nonce = str(self._nonce)
        version = subscription.next_version(self.revision)
        subscription.sending(resources, version, nonce)
        # A stable order (most responses hold one resource: nothing to sort).
        parts = (
            list(resources.values())
            if len(resources) < 2
            else [resources[name] for name in sorted(resources)]
        )
        parts.append(header(version, subscription.type_url, nonce))
        await self.context.write(b"".join(parts))


async def stream_aggregated_resources(
    core: DiscoveryCore,
    cache: ResourceCache,
    dns: DnsCache,
    context: Context,
    streams: set[AdsStream],
    refused: Refused,
) -> None:
    """Serve one ADS stream, kept in `streams` while it runs (so shutdown can end it);
    refused with UNAVAILABLE once shutdown has begun."""
    try:
        core.check_serving()
    except DiscoveryError:
        await context.abort(grpc.StatusCode.UNAVAILABLE, "Server is shutting down")
    stream = AdsStream(core, cache, dns, context, refused)
    streams.add(stream)
    try:
        await stream.run()
    finally:
        streams.discard(stream)
