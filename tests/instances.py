"""Fake instances for probe tests: a tiny HTTP/1.1 server on loopback whose answers tests set.

It also takes POSTs (recorded in `posts`), so it stands in for an alert webhook receiver.

async with fake_instances() as fleet:
    fleet.answer("/health", 200, {"status": "UP", "load_percentage": 0.3})
    fleet.answer("/hung", hang=True)
    ... probe f"http://127.0.0.1:{fleet.port}/health" ...
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from discovery.server import DiscoveryServer
from tests.conftest import ServerFactory


@dataclass
class Answer:
    """What one path answers. `drip` sends the body one byte per `drip` seconds, for ever."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    hang: bool = False
    drip: float | None = None
    endless: bool = False


class FakeInstances:
    """Answers `GET path` as told by `answer()`; unknown paths get 404. Records every hit."""

    def __init__(self) -> None:
        self.answers: dict[str, Answer] = {}
        self.hits: list[tuple[float, str]] = []
        self.sent: dict[str, int] = {}
        self.connections = 0
        self.posts: list[tuple[str, bytes]] = []
        self.heads: list[bytes] = []
        self.port = 0
        self.host = "127.0.0.1"
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()

    def answer(self, path: str, status: int = 200, body: Any = b"", **options: Any) -> None:
        if not isinstance(body, bytes):
            body = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.answers[path] = Answer(status, body, **options)

    def at(self, path: str | None) -> dict[str, Any]:
        """Register fields for an instance here, probed at `path` (None: heartbeat-only)."""
        return {"host": self.host, "port": self.port, "health_endpoint": path}

    def count(self, path: str) -> int:
        return sum(1 for _, hit in self.hits if hit == path)

    def times(self, path: str) -> list[float]:
        return [at for at, hit in self.hits if hit == path]

    async def start(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._server = await asyncio.start_server(self._serve, host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._closed.set()
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            if self._handlers:
                await asyncio.wait(self._handlers, timeout=2)
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        self.connections += 1
        try:
            while not self._closed.is_set() and await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            self._handlers.discard(task)
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        method, target = head.split(b" ", 2)[:2]
        path = target.decode()
        self.hits.append((time.monotonic(), path))
        if method == b"POST":
            self.posts.append((path, await reader.readexactly(_content_length(head))))
        answer = self.answers.get(path, Answer(404, b"not found"))
        if answer.hang:
            await self._closed.wait()
            return False
        await asyncio.sleep(answer.delay)
        length = 1 << 40 if answer.endless or answer.drip else len(answer.body)
        lines = [f"HTTP/1.1 {answer.status} X", f"Content-Length: {length}"]
        lines += [f"{name}: {value}" for name, value in answer.headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        if answer.drip is not None:
            while not self._closed.is_set():
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(answer.drip)
        if answer.endless:
            chunk = b"x" * 65536
            while not self._closed.is_set():
                writer.write(chunk)
                await writer.drain()
                self.sent[path] = self.sent.get(path, 0) + len(chunk)
        writer.write(answer.body)
        await writer.drain()
        return True


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


@contextlib.asynccontextmanager
async def fake_instances(host: str = "127.0.0.1") -> AsyncIterator[FakeInstances]:
    fleet = FakeInstances()
    await fleet.start(host)
    try:
        yield fleet
    finally:
        await fleet.stop()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@contextlib.asynccontextmanager
async def serving(
    make_server: ServerFactory, **settings: Any
) -> AsyncIterator[tuple[DiscoveryServer, httpx.AsyncClient]]:
    """A running server with `settings` and a REST client for it."""
    async with (
        make_server(**settings) as server,
        httpx.AsyncClient(base_url=server.rest_url, timeout=5) as client,
    ):
        yield server, client


async def healthy_ids(client: httpx.AsyncClient, service: str = "game") -> list[str]:
    response = await client.get(f"/v1/discovery/services/{service}/healthy")
    assert response.status_code == 200
    return [record["instance_id"] for record in response.json()["healthy_instances"]]


async def record(client: httpx.AsyncClient, instance_id: str) -> dict[str, Any]:
    """The REST record of `game:instance_id`."""
    response = await client.get("/v1/discovery/services/game")
    found: dict[str, Any] = next(
        r for r in response.json()["instances"] if r["instance_id"] == instance_id
    )
    return found


async def has_healthy(client: httpx.AsyncClient, instance_id: str) -> bool:
    return instance_id in await healthy_ids(client)


async def status_is(client: httpx.AsyncClient, instance_id: str, status: str) -> bool:
    return bool((await record(client, instance_id))["status"] == status)
