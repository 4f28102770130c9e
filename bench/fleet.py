"""A fleet of fake instances in one process: `GET /i/{n}` answers for instance n, fast.

Each answer is `{"status": "UP", "load_percentage": x}` and the time of every probe is kept, so
the bench can tell how evenly probes were spread. `GET /__hits` returns those times (monotonic
seconds, comparable across processes on one machine) as JSON, one list per instance.

Run: `python -m bench.fleet --count 10000 --ports 1` prints `fleet listening on PORT,...`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from typing import cast

_TEMPLATE = (
    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
)


class Fleet:
    """Probe times per instance, and the canned answer of each."""

    def __init__(self, count: int) -> None:
        self.hits: list[list[float]] = [[] for _ in range(count)]
        self._answers = [self._answer(n) for n in range(count)]

    @staticmethod
    def _answer(n: int) -> bytes:
        # Loads stay under the default critical threshold: the bench measures probing, not alerts.
        body = json.dumps({"status": "UP", "load_percentage": (n % 60) / 100}).encode()
        return _TEMPLATE.format(status="200 OK", length=len(body)).encode() + body

    def respond(self, path: bytes) -> bytes:
        if path.startswith(b"/i/"):
            n = int(path[3:])
            if 0 <= n < len(self.hits):
                self.hits[n].append(time.monotonic())
                return self._answers[n]
        if path == b"/__hits":
            body = json.dumps(self.hits).encode()
            return _TEMPLATE.format(status="200 OK", length=len(body)).encode() + body
        return _TEMPLATE.format(status="404 Not Found", length=0).encode()


class _Protocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive, GET only, no request bodies: just enough for health probes."""

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but they behave as one.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._buffer += data
        while (end := self._buffer.find(b"\r\n\r\n")) >= 0:
            head, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
            parts = head.split(b" ", 2)
            path = parts[1] if len(parts) > 1 else b"/"
            self._transport.write(self._fleet.respond(path))


async def serve(count: int, ports: int) -> None:
    fleet = Fleet(count)
    loop = asyncio.get_running_loop()
    servers = []
    for _ in range(ports):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        servers.append(await loop.create_server(lambda: _Protocol(fleet), sock=sock, backlog=4096))
    bound = [str(s.sockets[0].getsockname()[1]) for s in servers]
    print("fleet listening on " + ",".join(bound), flush=True)
    # Runs until its parent closes stdin (or kills it).
    await loop.run_in_executor(None, sys.stdin.read)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--ports", type=int, default=1)
    args = parser.parse_args()
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover
        runner = asyncio.Runner()
    with runner:
        runner.run(serve(args.count, args.ports))


if __name__ == "__main__":
    main()
