"""The REST port's connection hygiene: uvicorn's httptools protocol with a header-read deadline
and a cap on open connections.

uvicorn closes a keep-alive connection that stays idle after a response (`timeout_keep_alive`),
but nothing bounds the wait for a request's headers: a connection that never sends a byte, or
sends one byte a second (slowloris), would stay open for good. Here every request, the first
included, must have sent its whole head within `header_timeout` of its first byte (of the
connection's opening for the first request), or the connection is closed (checked by a sweep
four times per `header_timeout`, at most a second apart).

At most `limit` connections are open at once (the server derives it from the descriptor
limit). At the cap, a new connection takes the place of the oldest one that is not serving a
request (idle, or still sending its headers), which is closed; only when every open connection
is busy with a request is the new one refused (closed at once). So a flood of idle connections
can neither exhaust the process's descriptors nor lock out a client that sends a request.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from discovery.ratelimit import RateLimitedLog

log = logging.getLogger("discovery.connections")


class ConnectionGuard:
    """Shared by every REST connection: the cap, the deadline, the idle ones oldest first.

    The header deadline is checked by one sweep a fraction of `header_timeout` apart rather than
    by a timer per request (a timer set and cancelled costs a request more than the rest of the
    guard): a head that is late is cut off between `header_timeout` and 1.25 times it."""

    def __init__(self, limit: int, header_timeout: float, log_interval: float = 10.0) -> None:
        self.limit = limit
        self.header_timeout = header_timeout
        self.open = 0
        #: Connections not serving a request (idle, or sending a head), oldest first.
        self.idle: dict[GuardedHttpProtocol, None] = {}
        self._log = RateLimitedLog(log, log_interval)
        self._period = min(1.0, header_timeout / 4)
        self._sweeper: asyncio.TimerHandle | None = None

    def admit(self, connection: GuardedHttpProtocol) -> bool:
        """Count a new connection in; at the cap make room by closing the oldest idle one.
        False (the caller closes it) when every open connection is serving a request."""
        if self.open >= self.limit:
            if not self.idle:
                self._log.warning("REST connections refused at the cap of %d", self.limit)
                return False
            oldest = next(iter(self.idle))
            oldest.drop()
            self._log.warning("idle REST connections closed at the cap of %d", self.limit)
        self.open += 1
        if self._sweeper is None:
            self._sweeper = connection.loop.call_later(self._period, self._sweep, connection.loop)
        return True

    def leave(self, connection: GuardedHttpProtocol) -> None:
        self.open -= 1
        self.idle.pop(connection, None)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close the connections whose head is later than `header_timeout`; again while any
        connection is open."""
        late = loop.time() - self.header_timeout
        for connection in [c for c in self.idle if c.head_since is not None]:
            if connection.head_since is not None and connection.head_since < late:
                connection.drop()
        self._sweeper = loop.call_later(self._period, self._sweep, loop) if self.open > 0 else None


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol under a `ConnectionGuard` (see the module doc)."""

    guard: ConnectionGuard

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Loop time since when a request's head is awaited (None: serving, or idle between
        #: requests, where uvicorn's keep-alive timeout applies).
        self.head_since: float | None = None
        self._admitted = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.guard.admit(self):
            transport.close()
            return
        self._admitted = True
        self.head_since = self.loop.time()
        self.guard.idle[self] = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._admitted:
            self._admitted = False
            self.guard.leave(self)
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.head_since is None:
            self.head_since = self.loop.time()

    def on_headers_complete(self) -> None:
        self.head_since = None
        self.guard.idle.pop(self, None)  # serving a request: not to be closed for room
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._admitted and not self.transport.is_closing():
            idle = self.guard.idle
            idle.pop(self, None)
            idle[self] = None  # the newest idle one

    def drop(self) -> None:
        """Close this connection (idle, or late with its head)."""
        self.guard.idle.pop(self, None)
        if not self.transport.is_closing():
            self.transport.close()


def guarded_protocol(guard: ConnectionGuard) -> type[GuardedHttpProtocol]:
    """A protocol class for `uvicorn.Config(http=...)` bound to `guard`."""
    return type("GuardedHttp", (GuardedHttpProtocol,), {"guard": guard})
