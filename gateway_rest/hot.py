"""The busiest requests answered without the framework's per-request machinery.

Heartbeats and discovery reads make up nearly all of a discovery server's traffic. This ASGI
layer, inside the write guard (so size and credentials are already checked), finds the route a
request goes to in the app's own route table and, for four of them, calls the route's endpoint
itself, skipping dependency injection and response validation:

- the heartbeat route, when the body is declared `application/json` (the common spellings only;
  any other content type goes to FastAPI, which decides) and the route's own pydantic model
  accepts it;
- the three discovery reads, whose encoded answers are cached until the registry's version for
  them moves.

Everything else, every error included, goes on to the FastAPI routes, which stay the one
definition of the API (paths, OpenAPI, validation errors, status codes).
`tests/test_rest_hot.py` checks, over generated requests, that both answer byte for byte alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from discovery.core.errors import DiscoveryError
from discovery.core.facade import DiscoveryCore
from discovery.core.metrics import REST, Histogram
from gateway_rest import routers
from gateway_rest.guard import read_body, replay
from gateway_rest.records import EncodedRecords, encode
from gateway_rest.routing import RouteTable
from gateway_rest.schemas import HeartbeatRequest

#: Encoded answers kept (per route); past this the oldest are dropped.
CACHE_SIZE = 4096
#: Content types answered here; FastAPI parses these as JSON like every `application/*+json`.
JSON_TYPES = frozenset({b"application/json", b"application/json; charset=utf-8"})

Version = Callable[[DiscoveryCore, dict[str, Any]], int]


def _whole(core: DiscoveryCore, params: dict[str, Any]) -> int:
    return core.version


def _service(core: DiscoveryCore, params: dict[str, Any]) -> int:
    return core.service_version(params["service_name"])


#: The cached reads: each route's endpoint and the version its answer depends on.
_READS: dict[Callable[..., Any], Version] = {
    routers.list_services: _whole,
    routers.get_service: _service,
    routers.healthy_instances: _service,
}


class HotPaths:
    """Answers heartbeats and discovery reads through their endpoints; passes the rest on."""

    def __init__(
        self, app: ASGIApp, core: DiscoveryCore, routes: RouteTable, records: EncodedRecords
    ) -> None:
        self.app = app
        self.core = core
        self.routes = routes
        self.records = records
        self._cache: dict[tuple[Any, ...], tuple[int, bytes]] = {}
        self._ok = encode(routers.HEARTBEAT_OK)
        # The hot answers are timed here, into their routes' histograms: an ASGI layer around
        # this one would cost every request a coroutine more (`gateway_rest.timing` times the
        # requests that go on to the routes).
        self._timings: dict[str, Histogram] = {}

    def _timing(self, template: str) -> Histogram:
        histogram = self._timings.get(template)
        if histogram is None:
            histogram = self._timings[template] = self.core.metrics.request_histogram(
                REST, template
            )
        return histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (found := self.routes.find(scope)) is not None:
            route, params = found
            endpoint = route.endpoint
            started = time.perf_counter()
            if endpoint is routers.heartbeat:
                if await self._heartbeat(scope, receive, send):
                    self._timing(route.path).observe(time.perf_counter() - started)
                return
            version = None if endpoint is None else _READS.get(endpoint)
            if endpoint is not None and version is not None:
                body = await self._read(endpoint, version, params)
                if body is not None:
                    await _reply(send, body)
                    self._timing(route.path).observe(time.perf_counter() - started)
                    return
        await self.app(scope, receive, send)

    async def _heartbeat(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Answer a heartbeat here (True) or hand it to the route (False, timed there)."""
        body = await read_body(receive, limit=None) or b""
        answer = await self._beat(body) if _is_json(scope) else None
        if answer is None:
            await self.app(scope, replay(body, receive), send)
            return False
        if isinstance(answer, Response):
            await answer(scope, receive, send)
        else:
            await _reply(send, answer)
        return True

    async def _beat(self, body: bytes) -> bytes | Response | None:
        """The route's answer to a plainly valid heartbeat; None leaves it to the route."""
        try:
            request = HeartbeatRequest.model_validate_json(body)
            answer = await routers.heartbeat(request, self.core)
        except (ValidationError, DiscoveryError):
            return None
        if answer is routers.HEARTBEAT_OK:
            return self._ok
        return answer if isinstance(answer, Response) else encode(answer)

    async def _read(
        self, endpoint: Callable[..., Any], version: Version, params: dict[str, Any]
    ) -> bytes | None:
        """The encoded answer of a read route, or None for the route to answer (a 404)."""
        current = version(self.core, params)
        if current == 0 and params:
            return None  # a service never seen: the route decides (404 or an empty list)
        key = (endpoint, *params.values())
        entry = self._cache.get(key)
        if entry is not None and entry[0] == current:
            return entry[1]
        try:
            answer = await endpoint(core=self.core, records=self.records, **params)
        except DiscoveryError:
            return None
        body: bytes = answer.body  # the reads answer pre-encoded (`gateway_rest.records`)
        if len(self._cache) >= CACHE_SIZE:
            del self._cache[next(iter(self._cache))]
        self._cache[key] = (current, body)
        return body


def _is_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.lower() in JSON_TYPES
    return False


async def _reply(send: Send, body: bytes) -> None:
    # In Starlette's order, so that even the header order is the route's.
    headers = [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
