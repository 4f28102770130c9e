"""The app's routes as the two ASGI layers in front of FastAPI see them.

A route is a write when its OpenAPI operation names a security requirement (`openapi_extra=WRITE`):
that one declaration documents the bearer scheme in `/openapi.json` and makes the write guard
demand the secret. `RouteTable` finds the route a request goes to the way FastAPI's router does
(the first route whose path template and method both match), so the guard and the fast path
follow the route definitions instead of keeping their own list of paths. `create_app` gives both
layers one table, so each request is looked up once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi.routing import RouteContext, iter_route_contexts
from starlette._utils import get_route_path
from starlette.convertors import Convertor
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

#: `openapi_extra` of a route that changes the registry and so needs the secret.
WRITE: dict[str, Any] = {"security": [{"bearer": []}]}
#: Lookups remembered (by method and path); past this the oldest are dropped.
RECENT = 1024
_FOUND = "gateway_rest.route"  # the scope key `RouteTable.find` keeps its answer under
_UNSEEN = object()


@dataclass(frozen=True)
class Route:
    """One route, flattened out of the routers that hold it."""

    path: str
    endpoint: Callable[..., Any] | None
    methods: frozenset[str] | None  # None: any method (a mount, say)
    write: bool
    regex: re.Pattern[str] | None
    prefix: str  # what every path it takes starts with: a cheap test before the regex
    convertors: dict[str, Convertor[Any]]
    matches: Callable[[Scope], tuple[Match, Scope]]

    def match(self, scope: Scope, path: str) -> dict[str, Any] | None:
        """The path parameters when the route takes `scope` (its method already checked)."""
        if self.regex is None:  # not a plain route: ask it
            found, child = self.matches(scope)
            return child.get("path_params", {}) if found is Match.FULL else None
        # As `Route.matches` does, without building a child scope.
        if not path.startswith(self.prefix):
            return None
        matched = self.regex.match(path)
        if matched is None:
            return None
        params = matched.groupdict()
        for name, value in params.items():
            params[name] = self.convertors[name].convert(value)
        return params


class RouteTable:
    """The routes of an app in matching order, rebuilt when routes are added to the app."""

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        self._routes = routes
        self._size = -1
        self._by_method: dict[str, list[Route]] = {}
        self._plain = False
        self._recent: dict[tuple[str, str], tuple[Route, dict[str, Any]] | None] = {}

    def find(self, scope: Scope) -> tuple[Route, dict[str, Any]] | None:
        """The route FastAPI would run for `scope` and its path parameters, or None (404/405).

        Looked up once per request: the answer is kept in the scope for the next layer.
        """
        found: tuple[Route, dict[str, Any]] | None = scope.get(_FOUND, _UNSEEN)
        if found is not _UNSEEN:
            return found
        method, path = scope["method"], get_route_path(scope)
        candidates = self._candidates(method)
        key = (method, path)
        found = self._recent.get(key, _UNSEEN)
        if found is _UNSEEN:
            found = None
            for route in candidates:
                params = route.match(scope, path)
                if params is not None:
                    found = route, params
                    break
            if self._plain:  # the answer depends on the method and path alone: keep it
                if len(self._recent) >= RECENT:
                    del self._recent[next(iter(self._recent))]
                self._recent[key] = found
        scope[_FOUND] = found
        return found

    def _candidates(self, method: str) -> list[Route]:
        # Only a route that takes the method can match fully, so the others are skipped.
        if len(self._routes) != self._size:
            self._build()
        found = self._by_method.get(method)
        return self._by_method[""] if found is None else found

    def _build(self) -> None:
        routes = [_flat(context) for context in iter_route_contexts(self._routes)]
        # "" stands for a method no route names: only the routes that take any method remain.
        methods = {""}.union(*(route.methods or () for route in routes))
        self._by_method = {
            method: [route for route in routes if route.methods is None or method in route.methods]
            for method in methods
        }
        self._plain = all(route.regex is not None for route in routes)
        self._recent.clear()
        self._size = len(self._routes)


def _flat(context: RouteContext) -> Route:
    extra = getattr(context, "openapi_extra", None) or {}
    methods = context.methods
    regex = getattr(context, "path_regex", None)
    plain = isinstance(regex, re.Pattern) and context.methods is not None
    return Route(
        context.path or "",
        context.endpoint,
        None if methods is None else frozenset(methods),
        bool(extra.get("security")),
        regex if plain else None,
        (context.path or "").partition("{")[0] if plain else "",
        dict(getattr(context, "param_convertors", None) or {}),
        context.matches,
    )
