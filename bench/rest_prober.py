"""A REST latency prober in a child process: `GET /healthy` at a steady rate until told to stop.

    python -m bench.rest_prober --port PORT --services N [--rate 200]

Reads `/v1/discovery/services/svc-K/healthy` for K at random in 0..N-1 on one keep-alive
connection (a lean HTTP/1.1 client, so its own time per request stays small), each answer
checked for status 200 and a `healthy_instances` list. Prints `ready` once the first answer is
in; when its standard input closes, prints one JSON line: `[[due, seconds], ...]`, each read's
latency counted from when it was due by the schedule (CLOCK_MONOTONIC, shared by the
processes), so a stall shows in the reads it held up too; or `error ...` when an answer was
wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections.abc import Sequence


class RawHttp:
    """One keep-alive HTTP/1.1 connection: GET, status and body."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self._reader is not None
        self._writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        status = int((await self._reader.readline()).split()[1])
        length = 0
        while (line := await self._reader.readline()) not in (b"\r\n", b""):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, await self._reader.readexactly(length)


async def probe(port: int, services: int, rate: float) -> None:
    client = RawHttp(port)
    samples: list[tuple[float, float]] = []
    stop = asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    step, due = 1.0 / rate, time.monotonic()
    while not stop.done():
        path = f"/v1/discovery/services/svc-{random.randrange(services)}/healthy"
        status, body = await client.get(path)
        # From when the read was due, not when it could be sent: a slow answer delays the reads
        # behind it, and their wait counts (no coordinated omission).
        samples.append((due, time.monotonic() - due))
        if status != 200 or b'"healthy_instances":[' not in body:
            print(f"error {status} {body[:200]!r}", flush=True)
            return
        if len(samples) == 1:
            print("ready", flush=True)
        due += step
        await asyncio.sleep(max(0.0, due - time.monotonic()))
    print(json.dumps(samples), flush=True)


def cli(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--services", type=int, required=True)
    parser.add_argument("--rate", type=float, default=200.0)
    args = parser.parse_args(argv)
    asyncio.run(probe(args.port, args.services, args.rate))


if __name__ == "__main__":
    cli()
