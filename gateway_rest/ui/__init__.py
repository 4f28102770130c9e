"""The dashboard at `/ui/`: one static page whose own script follows the SSE watch.

The page, its script and its style ship inside this package (package data), are read once
when the app is built and served from memory; there is no build step and nothing comes from
elsewhere. The Content-Security-Policy allows scripts, styles and connections to this origin
only, so even a service name crafted as markup could not run code in the page (the script
also writes data as text only).
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}

_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidated on every load, so a new version of the server never runs an old script.
    "Cache-Control": "no-cache",
}


def _read(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def build_router() -> APIRouter:
    """The `/ui` routes, with the static files read now (at app creation, not at import)."""
    router = APIRouter(tags=["dashboard"], include_in_schema=False)
    files = {name: (_read(name), media) for name, media in _FILES.items()}

    @router.get("/ui")
    async def ui_without_slash() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=308)

    @router.get("/ui/")
    async def page() -> Response:
        return _serve(*files["index.html"])

    @router.get("/ui/{name}")
    async def asset(name: str) -> Response:
        found = files.get(name)
        if found is None or name == "index.html":
            return Response(b'{"detail":"Not Found"}', 404, media_type="application/json")
        return _serve(*found)

    return router


def _serve(body: bytes, media_type: str) -> Response:
    return Response(body, media_type=media_type, headers=_HEADERS)
