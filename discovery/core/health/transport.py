"""An httpx transport for many concurrent probes: one connection per small httpcore pool.

httpcore's connection pool re-examines every connection, and for idle ones every connection
again, whenever a request starts or ends, so its cost grows with the square of its size. With the
100 connections the monitor keeps in flight, one pool managed well under 100 requests per second
on the development machine; one pool per connection managed over 1,500. This transport keeps
that shape behind one `httpx.AsyncClient`: each request takes a free single-connection pool,
preferring the one that last talked to the same origin, so keep-alive connections are reused.

Callers keep at most `connections` requests in flight (the monitor's concurrency cap); past that,
requests share pools and wait for their connection.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable

import httpx

Origin = tuple[bytes, bytes, int | None]


class SpreadTransport(httpx.AsyncBaseTransport):
    """`connections` single-connection pools, each used by one request at a time."""

    def __init__(self, connections: int) -> None:
        # Probes are plain HTTP; one shared context saves building one per pool.
        context = ssl.create_default_context()
        single = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        self._pools = [
            httpx.AsyncHTTPTransport(verify=context, limits=single) for _ in range(connections)
        ]
        # Free pools, most recently used last (their connections are the likeliest alive), and
        # the same by the origin each last talked to, so a probe finds a warm connection in O(1).
        self._free: dict[int, None] = dict.fromkeys(range(connections))
        self._free_for: dict[Origin, dict[int, None]] = {}
        self._origin_of: list[Origin | None] = [None] * connections
        self._busy = [0] * connections
        self._spill = 0

    @property
    def available(self) -> int:
        """How many pools are free."""
        return len(self._free)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = self._acquire(request.url.raw_scheme, request.url.raw_host, request.url.port)
        try:
            response = await self._pools[index].handle_async_request(request)
        except BaseException:
            self._release(index)
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_Releasing(response.stream, lambda: self._release(index)),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()

    def _acquire(self, scheme: bytes, host: bytes, port: int | None) -> int:
        origin = (scheme, host, port)
        warm = self._free_for.get(origin)
        if warm:
            index, _ = warm.popitem()
            del self._free[index]
        else:
            if self._free:
                index, _ = self._free.popitem()
                self._forget(index)
            else:
                # Over the limit: share a pool (its requests queue for the connection).
                self._spill = index = (self._spill + 1) % len(self._pools)
            self._origin_of[index] = origin
        self._busy[index] += 1
        return index

    def _forget(self, index: int) -> None:
        """`index` is taken for another origin: no longer a free pool of its old one."""
        previous = self._origin_of[index]
        warm = None if previous is None else self._free_for.get(previous)
        if previous is None or warm is None:
            return
        warm.pop(index, None)
        if not warm:
            del self._free_for[previous]

    def _release(self, index: int) -> None:
        self._busy[index] -= 1
        if self._busy[index]:
            return
        self._free[index] = None
        origin = self._origin_of[index]
        if origin is not None:
            self._free_for.setdefault(origin, {})[index] = None


class _Releasing(httpx.AsyncByteStream):
    """A response body that frees its pool once closed."""

    def __init__(self, stream: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._stream = stream
        self._release: Callable[[], None] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if self._release is not None:
                self._release()
                self._release = None
