"""The outermost ASGI layer: every REST request timed into its route's histogram.

The histogram is `discovery_request_duration_seconds{protocol="rest", method=TEMPLATE}`, where
TEMPLATE is the route template (`/v1/discovery/services/{service_name}`), never the raw path, so
the label set stays bounded: a request no route matches is counted as `unmatched`.

Finding the template costs nothing on the busy paths: the router leaves the route it matched in
the scope (`scope["route"]`), and the hot paths (`gateway_rest.hot`) leave the template under
`ROUTE`. Only answers given before routing (401, 413) and 404s match the path against the
routes afterwards. Streams (the SSE watch) are not timed: their length is the client's choice.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from discovery.core.metrics import REST, Histogram, Metrics

#: Where a layer that answered without the router leaves the route template it answered.
ROUTE = "discovery.route"
#: The method label of requests no route matches.
UNMATCHED = "unmatched"
#: Routes whose answers are streams, not timed.
STREAMS = frozenset({"/v1/discovery/watch"})


class RequestTimer:
    """Times each HTTP request, from its arrival until the app has sent the whole answer."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self._metrics = metrics
        self._routes = routes  # the app's own list, so routes added later are seen
        self._histograms: dict[str, Histogram] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            elapsed = time.perf_counter() - started
            template = scope.get(ROUTE) or self._template(scope)
            histogram = self._histograms.get(template)
            if histogram is None:
                histogram = self._histogram(template)
            if histogram is not None:
                histogram.observe(elapsed)

    def _template(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is None:
            route = self._match(scope)
        path = getattr(route, "path", None)
        return path if isinstance(path, str) else UNMATCHED

    def _match(self, scope: Scope) -> BaseRoute | None:
        """The route this request's path is for (the method may be wrong), if any."""
        for route in self._routes:
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                return route
        return None

    def _histogram(self, template: str) -> Histogram | None:
        if template in STREAMS:
            return None
        histogram = self._histograms[template] = self._metrics.request_histogram(REST, template)
        return histogram
