"""`GET /`: the legacy greeting for programs, the dashboard for people.

The service this one replaces answered `GET /` with `{"message": "Service Discovery is running
🔍"}`, and load-balancer checks and old clients still ask for it. A browser, whose `Accept`
header prefers HTML to JSON, is sent to the dashboard at `/ui/` instead.
"""

from __future__ import annotations

from fastapi import APIRouter, Header
from fastapi.responses import RedirectResponse
from pydantic import BaseModel

router = APIRouter(tags=["health"])

DASHBOARD = "/ui/"


class Greeting(BaseModel):
    message: str


GREETING = Greeting(message="Service Discovery is running 🔍")


@router.get(
    "/",
    response_model=Greeting,
    responses={307: {"description": "To the dashboard, for a client that prefers HTML"}},
)
async def root(accept: str | None = Header(default=None)) -> Greeting | RedirectResponse:
    """The legacy greeting; a browser (preferring `text/html`) is redirected to `/ui/`."""
    if accept is not None and prefers_html(accept):
        return RedirectResponse(DASHBOARD, status_code=307)
    return GREETING


def prefers_html(accept: str) -> bool:
    """Whether an `Accept` header ranks `text/html` above `application/json` (RFC 9110: the
    most specific range that matches a type gives its quality; equal qualities are no
    preference, so `*/*` keeps the JSON answer)."""
    ranges = _ranges(accept)
    html = _quality(ranges, "text", "html")
    return html > 0 and html > _quality(ranges, "application", "json")


def _ranges(accept: str) -> list[tuple[str, str, float]]:
    ranges: list[tuple[str, str, float]] = []
    for item in accept.split(","):
        media, *params = item.split(";")
        kind, _, sub = media.strip().lower().partition("/")
        if not kind or not sub:
            continue
        ranges.append((kind, sub.strip(), _q(params)))
    return ranges


def _q(params: list[str]) -> float:
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                quality = float(value.strip())
            except ValueError:
                return 0.0
            return quality if 0.0 <= quality <= 1.0 else 0.0
    return 1.0


def _quality(ranges: list[tuple[str, str, float]], kind: str, sub: str) -> float:
    """The quality of `kind/sub`: from the most specific matching range, 0 when none."""
    best_rank, quality = -1, 0.0
    for range_kind, range_sub, q in ranges:
        if range_kind == kind and range_sub == sub:
            rank = 2
        elif range_kind == kind and range_sub == "*":
            rank = 1
        elif range_kind == "*" and range_sub == "*":
            rank = 0
        else:
            continue
        if rank > best_rank:
            best_rank, quality = rank, q
    return quality
