"""The ASGI layer in front of the routes: each request they answer timed into its histogram.

The histogram is `discovery_request_duration_seconds{protocol="rest", method=TEMPLATE}`, where
TEMPLATE is the route template (`/v1/discovery/services/{service_name}`), never the raw path, so
the label set stays bounded: a request no route matches is counted as `unmatched`. The router
leaves the route it matched in the scope (`scope["route"]`, for a wrong method too), so finding
the template costs nothing.

This layer sits inside the hot paths, which time their own answers (`gateway_rest.hot`), and
inside the write guard, whose refusals (401, 413) are not timed. Streams (the SSE watch) are not
timed either: their length is the client's choice.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Receive, Scope, Send

from discovery.core.metrics import REST, Histogram, Metrics

#: The method label of requests no route matches.
UNMATCHED = "unmatched"
#: Routes whose answers are streams, not timed.
STREAMS = frozenset({"/v1/discovery/watch"})


class RequestTimer:
    """Times each HTTP request, from its arrival until the app has sent the whole answer."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self._metrics = metrics
        self._histograms: dict[str, Histogram | None] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            elapsed = time.perf_counter() - started
            template = _template(scope)
            histogram = self._histograms.get(template)
            if histogram is None and template not in self._histograms:
                histogram = self._histograms[template] = self._histogram(template)
            if histogram is not None:
                histogram.observe(elapsed)

    def _histogram(self, template: str) -> Histogram | None:
        if template in STREAMS:
            return None
        return self._metrics.request_histogram(REST, template)


def _template(scope: Scope) -> str:
    """The template of the route the router matched (a mount's prefix), else `unmatched`."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else UNMATCHED
