"""`create_app(core)`: the FastAPI facade over a `DiscoveryCore`; nothing is built at import."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp

from discovery.core.facade import DiscoveryCore
from gateway_rest import errors, metrics, prometheus_sd, root
from gateway_rest.guard import WriteGuard
from gateway_rest.hot import HotPaths
from gateway_rest.records import EncodedRecords
from gateway_rest.routers import health_router, router
from gateway_rest.routing import RouteTable
from gateway_rest.sse import router as watch_router
from gateway_rest.timing import RequestTimer
from gateway_rest.ui import build_router as build_ui_router


class DiscoveryApp(FastAPI):
    """FastAPI with the write guard and the hot paths in front of its whole middleware stack.

    Starlette would put added middleware inside its error layers (`ServerErrorMiddleware` and
    FastAPI's exception telemetry), which wrap every `send` of every request in one more
    coroutine. The guard and the hot paths answer with complete responses of their own and let
    every error go on to the routes, so they gain nothing from those layers; in front of them a
    hot heartbeat costs a few percent less. An exception escaping them is answered 500 by
    uvicorn, as the error layer would.
    """

    def __init__(self, core: DiscoveryCore, **settings: Any) -> None:
        super().__init__(**settings)
        self.core = core
        self.route_table = RouteTable(self.routes)
        #: False: every request goes to the routes (what the hot paths must answer alike).
        self.hot_paths = True

    def build_middleware_stack(self) -> ASGIApp:
        app = super().build_middleware_stack()
        if self.hot_paths:
            app = HotPaths(app, core=self.core, routes=self.route_table, records=self.state.records)
        return WriteGuard(app, auth=self.core.auth, routes=self.route_table)


def create_app(core: DiscoveryCore) -> DiscoveryApp:
    """The REST application serving `core`: `/v1/discovery/...`, `/health`, `/metrics`, `/`,
    `/docs`, `/ui/`."""
    app = DiscoveryApp(
        core,
        title="Service Discovery",
        version="1.0.0",
        description="Service registration, discovery and health monitoring (legacy REST API).",
        # FastAPI's own OpenTelemetry hooks look for configured providers on every request
        # (about a third of a hot heartbeat's cost); the server exports its own metrics.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.core = core
    app.state.records = EncodedRecords()
    app.state.metrics = metrics.build_registry(core)
    app.include_router(router)
    app.include_router(watch_router)
    app.include_router(prometheus_sd.router)
    app.include_router(health_router)
    app.include_router(build_ui_router())
    app.include_router(metrics.router)
    app.include_router(root.router)
    errors.install(app)
    # Inside the guard and the hot paths (see `DiscoveryApp`): the timer of what the routes
    # answer.
    app.add_middleware(RequestTimer, metrics=core.metrics)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The generated schema plus the bearer scheme the write routes name."""
    if app.openapi_schema is None:
        schema = FastAPI.openapi(app)
        components = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {})["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "SERVICE_DISCOVERY_SECRET; needed for writes when it is set.",
        }
        app.openapi_schema = schema
    return app.openapi_schema
