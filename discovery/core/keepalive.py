"""Connection-bound heartbeats: which instances each KeepAlive stream holds, and what its end does.

A stream holds an instance from its first heartbeat for it until a request with `detach` set.
When the stream ends, every instance it still holds is severed (turns unhealthy at once, see
`Registry.sever`) unless another open stream holds it too: a client that reconnects opens its new
stream before the server has noticed the old one's end, and that must not flap its instances.

Protocol-neutral and owned by the core (`DiscoveryCore.keepalive`); the gRPC adapter
(`discovery.rpc.streams`) reads requests and writes acks.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from discovery.core import validation
from discovery.core.metrics import KEEPALIVE
from discovery.core.model import Instance

Key = tuple[str, str]


class KeepAliveCore(Protocol):
    """What the sessions need from the core (`KeepAliveCore` is one)."""

    @property
    def shutting_down(self) -> bool:
        """Shutdown has begun: nothing is severed any more."""

    def check_serving(self) -> None:
        """Raise `ShuttingDown` once shutdown has begun."""

    def on_shutdown(self, hook: Callable[[], None]) -> None:
        """Call `hook` when shutdown begins."""

    def heartbeat(
        self, service_name: str, instance_id: str, load: float | None = None, via: str = ...
    ) -> Instance:
        """Record a heartbeat that came in by `via`; `InstanceNotFound` when unknown."""

    def sever(self, keys: list[Key]) -> None:
        """These instances lost the stream that kept them alive."""

    def hold(self, key: Key, held: bool) -> None:
        """A stream took (`held`) or let go of an instance (replicas record who keeps it)."""


class KeepAliveSessions:
    """The open KeepAlive streams of one core."""

    def __init__(self, core: KeepAliveCore) -> None:
        self._core = core
        self._holders: Counter[Key] = Counter()
        self._stopping: asyncio.Future[None] | None = None
        core.on_shutdown(self._stop)

    def open(self) -> KeepAliveSession:
        """A session for a new stream; `ShuttingDown` once shutdown has begun."""
        self._core.check_serving()
        return KeepAliveSession(self._core, self._holders)

    @property
    def stopping(self) -> asyncio.Future[None]:
        """Done once shutdown begins: streams end then instead of holding up the stop."""
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_future()
            if self._core.shutting_down:
                self._stopping.set_result(None)
        return self._stopping

    def _stop(self) -> None:
        if self._stopping is not None and not self._stopping.done():
            self._stopping.set_result(None)


class KeepAliveSession:
    """The instances one stream keeps alive."""

    def __init__(self, core: KeepAliveCore, holders: Counter[Key]) -> None:
        self._core = core
        self._holders = holders
        self._held: set[Key] = set()
        self._closed = False

    def beat(
        self, service_name: str, instance_id: str, load: float | None, detach: bool = False
    ) -> Instance:
        """One request: a heartbeat, then hold or (with `detach`) release the instance.

        Raises `InvalidArgument` (bad name or load) or `InstanceNotFound` and changes nothing
        then.
        """
        load = validation.heartbeat(service_name, instance_id, load)
        instance = self._core.heartbeat(service_name, instance_id, load, KEEPALIVE)
        key = instance.key
        if detach:
            if key in self._held:
                self._held.discard(key)
                self._release(key)
        elif key not in self._held:
            self._held.add(key)
            self._holders[key] += 1
            if self._holders[key] == 1:
                self._core.hold(key, True)
        return instance

    def close(self) -> None:
        """The stream ended: sever every instance it still holds and no other stream holds.

        Idempotent. During shutdown nothing is severed: the registry goes away with the process.
        """
        if self._closed:
            return
        self._closed = True
        orphans = [key for key in self._held if self._release(key)]
        self._held.clear()
        if orphans and not self._core.shutting_down:
            self._core.sever(orphans)

    def _release(self, key: Key) -> bool:
        """Drop this stream's hold; True when no stream holds the instance any more."""
        count = self._holders[key] - 1
        if count > 0:
            self._holders[key] = count
            return False
        del self._holders[key]
        self._core.hold(key, False)
        return True
