"""The app's routes as the two ASGI layers in front of FastAPI see them.

A route is a write when its OpenAPI operation names a security requirement (`openapi_extra=WRITE`):
that one declaration documents the bearer scheme in `/openapi.json` and makes the write guard
demand the secret. `RouteTable` finds the route a request goes to the way FastAPI's router does
(the first route whose path template and method both match), so the guard and the fast path
follow the route definitions instead of keeping their own list of paths.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi.routing import RouteContext, iter_route_contexts
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

#: `openapi_extra` of a route that changes the registry and so needs the secret.
WRITE: dict[str, Any] = {"security": [{"bearer": []}]}


@dataclass(frozen=True)
class Route:
    """One route, flattened out of the routers that hold it."""

    path: str
    endpoint: Callable[..., Any] | None
    methods: frozenset[str] | None  # None: any method (a mount, say)
    write: bool
    matches: Callable[[Scope], tuple[Match, Scope]]


class RouteTable:
    """The routes of an app in matching order, rebuilt when routes are added to the app."""

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        self._routes = routes
        self._size = -1
        self._by_method: dict[tuple[str, bool], list[Route]] = {}

    def find(self, scope: Scope) -> tuple[Route, dict[str, Any]] | None:
        """The route FastAPI would run for `scope` and its path parameters, or None (404/405)."""
        for route in self._candidates(scope["method"], writes_only=False):
            match, child = route.matches(scope)
            if match is Match.FULL:
                return route, child["path_params"]
        return None

    def is_write(self, scope: Scope) -> bool:
        """Whether `scope` would reach a write route."""
        return any(
            route.matches(scope)[0] is Match.FULL
            for route in self._candidates(scope["method"], writes_only=True)
        )

    def _candidates(self, method: str, writes_only: bool) -> list[Route]:
        # Only a route that takes the method can match fully, so the others are skipped.
        if len(self._routes) != self._size:
            self._build()
        found = self._by_method.get((method, writes_only))
        return self._by_method[("", writes_only)] if found is None else found

    def _build(self) -> None:
        routes = [_flat(context) for context in iter_route_contexts(self._routes)]
        # "" stands for a method no route names: only the routes that take any method remain.
        methods = {""}.union(*(route.methods or () for route in routes))
        self._by_method = {
            (method, writes_only): [
                route
                for route in routes
                if (route.methods is None or method in route.methods)
                and (route.write or not writes_only)
            ]
            for method in methods
            for writes_only in (False, True)
        }
        self._size = len(self._routes)


def _flat(context: RouteContext) -> Route:
    extra = getattr(context, "openapi_extra", None) or {}
    methods = context.methods
    return Route(
        context.path or "",
        context.endpoint,
        None if methods is None else frozenset(methods),
        bool(extra.get("security")),
        context.matches,
    )
