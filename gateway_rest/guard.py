"""The ASGI guard in front of the routes: body size first, then credentials for writes.

It runs before FastAPI reads a body, so a write without valid credentials gets 401 whatever its
body (malformed JSON included), and only an oversized body may get 413 before that.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from discovery.core.auth import Authenticator
from discovery.core.errors import AuthError

MAX_BODY_BYTES = 64 * 1024

_WRITE_POSTS = frozenset({"/v1/discovery/register", "/v1/discovery/heartbeat"})
_UNREGISTER = "/v1/discovery/unregister/"


def is_write(method: str, path: str) -> bool:
    """The routes that change the registry and so need the secret."""
    if method == "POST":
        return path in _WRITE_POSTS
    return method == "DELETE" and path.startswith(_UNREGISTER)


class WriteGuard:
    """413 for bodies over `max_body` bytes; 401 for writes without valid credentials."""

    def __init__(self, app: ASGIApp, auth: Authenticator, max_body: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.auth = auth
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length, authorization = _headers(scope["headers"])
        if length is not None and length > self.max_body:
            await _reply(send, 413, {"detail": "Request body too large"})
            return
        if not is_write(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        try:
            self.auth.check(authorization)
        except AuthError as exc:
            await _reply(send, 401, {"detail": exc.message}, [(b"www-authenticate", b"Bearer")])
            return
        body = await read_body(receive, self.max_body)
        if body is None:
            await _reply(send, 413, {"detail": "Request body too large"})
            return
        await self.app(scope, replay(body, receive), send)


def _headers(headers: Iterable[tuple[bytes, bytes]]) -> tuple[int | None, str | None]:
    length: int | None = None
    authorization: str | None = None
    for name, value in headers:
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                length = None
        elif name == b"authorization":
            authorization = value.decode("latin-1")
    return length, authorization


async def read_body(receive: Receive, limit: int | None) -> bytes | None:
    """The whole request body, or None once it passes `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if limit is not None and size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands out `body` (already read) first, then defers to `receive`."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _reply(
    send: Send,
    status: int,
    content: dict[str, str],
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps(content, separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
