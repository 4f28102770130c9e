"""Host names of instances resolved by the server: in the background, cached and refreshed.

xDS endpoints carry IP addresses. An instance registered under a host name is left out of its
assignment until the name resolves (a failure is logged at WARNING), then carries the first
address found; names in use are resolved again every `refresh` seconds and a change of address
reaches the streams through the listeners.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable

log = logging.getLogger("discovery.xds")


@functools.lru_cache(maxsize=4096)
def ip_literal(host: str) -> str | None:
    """`host` as an address if it is an IPv4 or IPv6 literal (brackets allowed), else None."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


async def _first_address(host: str) -> str:
    """The first address the system resolver gives for `host` (off the event loop's thread)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return str(infos[0][4][0])


class DnsCache:
    """Addresses of host names, resolved off the request path. Used from one event loop."""

    def __init__(
        self, refresh: float = 30.0, resolve: Callable[[str], Awaitable[str]] | None = None
    ) -> None:
        self.refresh = refresh
        self._resolver = resolve or _first_address
        self._addresses: dict[str, str] = {}
        self._failing: set[str] = set()
        self._used: set[str] = set()  # looked up since the last refresh
        self._pending: set[asyncio.Task[None]] = set()
        self._resolving: set[str] = set()
        self._listeners: set[Callable[[], None]] = set()
        self._refresher: asyncio.Task[None] | None = None
        #: Moves whenever a name gets a new address (what was built from addresses is stale).
        self.generation = 0

    def address(self, host: str) -> str | None:
        """The address to publish for `host`, or None while it is not resolved (yet)."""
        literal = ip_literal(host)
        if literal is not None:
            return literal
        self._used.add(host)
        found = self._addresses.get(host)
        if found is None and host not in self._resolving:
            self._start(host)
        return found

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever a name resolves to a new address."""
        self._listeners.add(listener)

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.discard(listener)

    def close(self) -> None:
        """Stop resolving (shutdown)."""
        for task in (*self._pending, self._refresher):
            if task is not None:
                task.cancel()
        self._refresher = None

    def _start(self, host: str) -> None:
        loop = asyncio.get_running_loop()
        self._resolving.add(host)
        task = loop.create_task(self._resolve(host))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        if self._refresher is None:
            self._refresher = loop.create_task(self._refresh_forever())

    async def _resolve(self, host: str) -> None:
        try:
            address = await self._resolver(host)
        except (OSError, IndexError) as exc:
            if host not in self._failing:
                self._failing.add(host)
                known = self._addresses.get(host)
                keep = f"; keeping {known}" if known else "; its instances are left out"
                log.warning("Cannot resolve host %r for xDS: %s%s", host, exc, keep)
            return
        finally:
            self._resolving.discard(host)
        self._failing.discard(host)
        if self._addresses.get(host) != address:
            self._addresses[host] = address
            self.generation += 1
            for listener in list(self._listeners):
                listener()

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.refresh)
            used, self._used = self._used, set()
            # Names no stream asked for during a whole period are forgotten.
            for host in list(self._addresses):
                if host not in used:
                    del self._addresses[host]
            self._failing &= used
            for host in used:
                if host not in self._resolving:
                    with contextlib.suppress(RuntimeError):
                        self._start(host)
