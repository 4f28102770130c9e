"""`ServiceWatcher`: a local, always-current view of services' instances, built on Watch."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from types import TracebackType
from typing import Literal, Self

import grpc

from discovery.client._common import (
    Backoff,
    InstanceChange,
    NoInstanceAvailable,
    ServiceInstance,
    TLSFiles,
    open_channel,
    stop_task,
)
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc

log = logging.getLogger("discovery.client")

Strategy = Literal["round_robin", "least_load", "random"]
ChangeCallback = Callable[[InstanceChange], Awaitable[None] | None]
View = dict[str, dict[str, ServiceInstance]]
_WatchCall = grpc.aio.UnaryStreamCall[pb.WatchRequest, pb.WatchResponse]

#: The server sends something at least every 10 s; silence for this long means a dead stream.
STALE_AFTER = 30.0


class ServiceWatcher:
    """Follows the instances of `services` (all services when empty) over one Watch stream.

    The view is complete and current once `wait_synced()` returns (entering `async with` waits
    for it). After a broken stream it reconnects with backoff and resumes from the last revision
    it saw, so nothing is missed and nothing is sent twice; only when the server cannot resume
    (it restarted, or the history is gone) does a fresh snapshot replace the view, and the
    difference is still reported as individual changes.

        async with ServiceWatcher("127.0.0.1:50051", ["game"]) as watcher:
            instance = watcher.pick("game", "least_load")
            async for change in watcher.changes():
                print(change.type, change.instance.address)

    With `healthy_only` (default) the view holds healthy instances only, and an instance that
    turns unhealthy is a DELETE. `on_change` is called (and awaited when it is a coroutine
    function) for every change, in order, before the next message is read.

    TLS: `ca_file` (the CA that signed the server's certificate; the system's roots when only
    `tls=True` is given) and, for a server that requires client certificates, `cert_file` and
    `key_file` (PEM). Without any of them the channel is plain.
    """

    def __init__(
        self,
        target: str | None = None,
        services: Iterable[str] = (),
        *,
        channel: grpc.aio.Channel | None = None,
        healthy_only: bool = True,
        on_change: ChangeCallback | None = None,
        backoff: Backoff | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        tls: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        if channel is None and target is None:
            raise ValueError("ServiceWatcher needs a target or a channel")
        self.services = tuple(services)
        self.healthy_only = healthy_only
        self._own_channel = channel is None
        self._channel = (
            channel
            if channel is not None
            else open_channel(str(target), TLSFiles.of(ca_file, cert_file, key_file, tls))
        )
        self._stub = pb_grpc.DiscoveryServiceStub(self._channel)
        self._on_change = on_change
        self._backoff = backoff or Backoff()
        self._rng = rng or random.Random()
        self._view: View = {}
        self._frozen: dict[str, tuple[ServiceInstance, ...]] = {}
        self._pending: View | None = None  # a snapshot being received
        self._turns: dict[str, itertools.count[int]] = {}
        self._subscribers: list[asyncio.Queue[InstanceChange | None]] = []  # None: the end
        self._ended = False
        self._synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.revision = 0
        self.resets = 0
        self.reconnects = 0

    async def __aenter__(self) -> Self:
        try:
            await self.wait_synced()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def start(self) -> None:
        """Start following (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="discovery-watch")
            self._task.add_done_callback(self._end_changes)

    async def wait_synced(self) -> None:
        """Wait until the view is complete (the first snapshot has arrived)."""
        self.start()
        waiter = asyncio.ensure_future(self._synced.wait())
        assert self._task is not None
        await asyncio.wait((waiter, self._task), return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():
            waiter.cancel()
            await self._task  # raises what stopped it
            raise RuntimeError("the watcher stopped before it synced")

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    async def close(self) -> None:
        """Stop following and close the channel it opened."""
        if self._task is not None:
            # A refusal (INVALID_ARGUMENT) that stopped it was raised by wait_synced() already.
            await stop_task(self._task, 0)
        self._end_changes()
        if self._own_channel:
            await self._channel.close(None)

    # -- the view ---------------------------------------------------------------------------

    def instances(self, service: str | None = None) -> list[ServiceInstance]:
        """The instances in view: of one service, or of all, in the order they came."""
        if service is not None:
            return list(self._frozen.get(service, ()))
        return [i for instances in self._frozen.values() for i in instances]

    def pick(self, service: str, strategy: Strategy = "round_robin") -> ServiceInstance:
        """A healthy instance of `service`: in turn (`round_robin`), the least loaded
        (`least_load`, in turn among equals) or any (`random`). `NoInstanceAvailable` if none.

        Safe to call from any thread: it reads an immutable copy of the view.
        """
        candidates = [i for i in self._frozen.get(service, ()) if i.healthy]
        if not candidates:
            raise NoInstanceAvailable(service)
        if strategy == "random":
            return self._rng.choice(candidates)
        if strategy == "least_load":
            lowest = min(i.load_percentage for i in candidates)
            candidates = [i for i in candidates if i.load_percentage <= lowest + 1e-9]
        elif strategy != "round_robin":
            raise ValueError(f"unknown strategy {strategy!r}")
        turn = next(self._turns.setdefault(service, itertools.count()))
        return candidates[turn % len(candidates)]

    async def changes(self) -> AsyncIterator[InstanceChange]:
        """Every change from now on, in order, until the watcher is closed (or stopped by a
        refusal of its request)."""
        if self._ended:
            return
        queue: asyncio.Queue[InstanceChange | None] = asyncio.Queue()
        self._subscribers.append(queue)
        try:
            while (change := await queue.get()) is not None:
                yield change
        finally:
            self._subscribers.remove(queue)

    # -- the stream -------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            request = pb.WatchRequest(
                service_names=self.services,
                healthy_only=self.healthy_only,
                start_revision=self.revision,
            )
            call = self._stub.Watch(request)
            try:
                await self._follow(call)
                log.info("The server ended the watch stream; reconnecting")
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise
                log.warning("Watch stream lost (%s); reconnecting", exc.code().name)
            except TimeoutError:
                log.warning("Watch stream silent for %ss; reconnecting", STALE_AFTER)
            except Exception:  # keep following whatever went wrong
                log.exception("Watch failed; reconnecting")
            finally:
                call.cancel()
            self._pending = None  # half a snapshot is no use: the next stream sends another
            self.reconnects += 1
            await asyncio.sleep(self._backoff.next())

    async def _follow(self, call: _WatchCall) -> None:
        while True:
            async with asyncio.timeout(STALE_AFTER):
                message = await call.read()
            if not isinstance(message, pb.WatchResponse):
                return  # grpc.aio.EOF: the server ended the stream
            self._backoff.reset()
            await self._apply(message)

    async def _apply(self, message: pb.WatchResponse) -> None:
        if message.reset:
            self._pending = {}
            self.resets += 1
        changes: list[InstanceChange] = []
        target = self._pending if self._pending is not None else self._view
        for event in message.events:
            instance = ServiceInstance.from_pb(event.instance, event.revision)
            if event.type == pb.EVENT_TYPE_DELETE:
                removed = target.get(instance.service_name, {}).pop(instance.instance_id, None)
                if removed is not None and target is self._view:
                    changes.append(InstanceChange("DELETE", instance, event.revision))
            else:
                target.setdefault(instance.service_name, {})[instance.instance_id] = instance
                if target is self._view:
                    changes.append(InstanceChange("PUT", instance, event.revision))
        touched = {change.instance.service_name for change in changes}
        if message.synced:
            if self._pending is not None:
                changes = _difference(self._view, self._pending, message.revision)
                touched = set(self._view) | set(self._pending)
                self._view, self._pending = self._pending, None
            self.revision = message.revision
        self._freeze(touched)
        if message.synced:
            self._synced.set()
        for change in changes:
            await self._emit(change)

    def _freeze(self, names: Iterable[str]) -> None:
        """Publish immutable copies of the changed services, for `pick()` and `instances()`
        from any thread: a new dict replaces the old one, which is never changed in place."""
        frozen = dict(self._frozen)
        for name in names:
            instances = self._view.get(name)
            if instances:
                frozen[name] = tuple(instances.values())
            else:
                self._view.pop(name, None)
                frozen.pop(name, None)
        self._frozen = frozen

    def _end_changes(self, _: object = None) -> None:
        """End every `changes()` iteration (once the watcher stopped)."""
        if not self._ended:
            self._ended = True
            for queue in self._subscribers:
                queue.put_nowait(None)

    async def _emit(self, change: InstanceChange) -> None:
        for queue in self._subscribers:
            queue.put_nowait(change)
        if self._on_change is not None:
            try:
                outcome = self._on_change(change)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:  # a faulty callback must not stop the view from following
                log.exception("on_change callback failed")


def _difference(old: View, new: View, revision: int) -> list[InstanceChange]:
    """The changes that turn `old` into `new` (after a snapshot replaced the view)."""
    changes: list[InstanceChange] = []
    for name, instances in old.items():
        kept = new.get(name, {})
        for instance_id, instance in instances.items():
            if instance_id not in kept:
                changes.append(InstanceChange("DELETE", instance, revision))
    for name, instances in new.items():
        before = old.get(name, {})
        for instance_id, instance in instances.items():
            if before.get(instance_id) != instance:
                changes.append(InstanceChange("PUT", instance, instance.revision))
    return changes
