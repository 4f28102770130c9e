"""The busiest requests answered without the framework's per-request machinery.

Heartbeats and discovery reads make up nearly all of a discovery server's traffic. This ASGI
layer, inside the write guard (so size and credentials are already checked), answers them
straight from the core:

- `POST /v1/discovery/heartbeat` when the body is a JSON object that the route's own pydantic
  model accepts and the instance exists;
- `GET /v1/discovery/services`, `/services/{name}` and `/services/{name}/healthy`, from bodies
  encoded once by the routes' own response models and cached until the registry's version for
  them moves.

Everything else, every error included, goes on to the FastAPI routes, which stay the one
definition of the API (OpenAPI, validation errors, status codes). A hot answer is byte for byte
the answer the route would give: the same models serialize it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from discovery.core.errors import DiscoveryError
from discovery.core.facade import DiscoveryCore
from discovery.core.metrics import REST, Histogram
from gateway_rest.guard import read_body, replay
from gateway_rest.schemas import (
    HealthyResponse,
    HeartbeatRequest,
    InstanceRecord,
    Outcome,
    ServiceResponse,
    ServicesResponse,
)

_SERVICES = "/v1/discovery/services"
_HEARTBEAT = "/v1/discovery/heartbeat"
# The route templates of the answers given here (for the request-duration histogram).
_SERVICE = _SERVICES + "/{service_name}"
_HEALTHY = _SERVICE + "/healthy"
_HEARTBEAT_OK = Outcome(success=True, message="Heartbeat updated successfully")
_JSON_HEADERS = [(b"content-type", b"application/json")]
#: Encoded answers kept (per kind); past this the oldest are dropped.
CACHE_SIZE = 4096


class HotPaths:
    """Answers heartbeats and discovery reads from the core; passes everything else on."""

    def __init__(self, app: ASGIApp, core: DiscoveryCore) -> None:
        self.app = app
        self.core = core
        self._ok = _HEARTBEAT_OK.__pydantic_serializer__.to_json(_HEARTBEAT_OK)
        self._cache: dict[tuple[str, str], tuple[int, bytes]] = {}
        # The hot answers are timed here, into their routes' histograms: an ASGI layer around
        # this one would cost every request a coroutine more (`gateway_rest.timing` times the
        # requests that go on to the routes).
        metrics = core.metrics
        self._timings: dict[str, Histogram] = {
            route: metrics.request_histogram(REST, route)
            for route in (_SERVICES, _SERVICE, _HEALTHY, _HEARTBEAT)
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method, path = scope["method"], scope["path"]
            if method == "GET" and path.startswith(_SERVICES):
                started = time.perf_counter()
                answer = self._read(path)
                if answer is not None:
                    route, body = answer
                    await _reply(send, body)
                    self._timings[route].observe(time.perf_counter() - started)
                    return
            elif method == "POST" and path == _HEARTBEAT:
                await self._heartbeat(scope, receive, send)
                return
        await self.app(scope, receive, send)

    # -- heartbeats -------------------------------------------------------------------------

    async def _heartbeat(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        body = await read_body(receive, limit=None)
        if _is_json(scope) and self._beat(body):
            await _reply(send, self._ok)
            self._timings[_HEARTBEAT].observe(time.perf_counter() - started)
        else:
            await self.app(scope, replay(body or b"", receive), send)

    def _beat(self, body: bytes | None) -> bool:
        """Apply a plainly valid heartbeat; False leaves the request to the route."""
        try:
            request = HeartbeatRequest.model_validate_json(body or b"")
            self.core.heartbeat(
                request.service_name, request.instance_id, request.load_percentage, REST
            )
        except (ValidationError, DiscoveryError):
            return False
        return True

    # -- reads ------------------------------------------------------------------------------

    def _read(self, path: str) -> tuple[str, bytes] | None:
        """The route (template) and encoded answer of a discovery read, or None for the
        routes to answer."""
        core = self.core
        if path == _SERVICES:
            return _SERVICES, self._cached("all", "", core.version, self._all)
        if not path.startswith(_SERVICES + "/"):
            return None
        name, slash, rest = path[len(_SERVICES) + 1 :].partition("/")
        if not name:
            return None
        version = core.service_version(name)
        if not slash:
            if version == 0:
                return None  # the route's 404
            return _SERVICE, self._cached("service", name, version, lambda: self._service(name))
        if rest == "healthy":
            return _HEALTHY, self._cached("healthy", name, version, lambda: self._healthy(name))
        return None

    def _cached(self, kind: str, name: str, version: int, build: Callable[[], bytes]) -> bytes:
        key = (kind, name)
        entry = self._cache.get(key)
        if entry is not None and entry[0] == version:
            return entry[1]
        body = build()
        if len(self._cache) >= CACHE_SIZE:
            del self._cache[next(iter(self._cache))]
        self._cache[key] = (version, body)
        return body

    def _all(self) -> bytes:
        services = {
            name: [InstanceRecord.of(i) for i in instances]
            for name, instances in self.core.services().items()
        }
        return _encode(ServicesResponse(services=services))

    def _service(self, name: str) -> bytes:
        instances = [InstanceRecord.of(i) for i in self.core.instances(name)]
        return _encode(ServiceResponse(service_name=name, instances=instances))

    def _healthy(self, name: str) -> bytes:
        healthy = [InstanceRecord.of(i) for i in self.core.healthy(name)]
        return _encode(HealthyResponse(service_name=name, healthy_instances=healthy))


def _encode(model: ServicesResponse | ServiceResponse | HealthyResponse) -> bytes:
    return model.__pydantic_serializer__.to_json(model)


def _is_json(scope: Scope) -> bool:
    """The body is declared JSON, as FastAPI requires before it parses one."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            # As FastAPI decides: main type `application`, subtype `json` or `...+json`.
            media: bytes = value.split(b";", 1)[0].strip().lower()
            if media.count(b"/") != 1:
                return False
            main, sub = media.split(b"/")
            return main == b"application" and (sub == b"json" or sub.endswith(b"+json"))
    return False


async def _reply(send: Send, body: bytes) -> None:
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
