"""A flood of idle connections: server RSS per open idle connection, and RSS once they closed.

A fresh server (defaults, but a header timeout long enough that the flood stays open while it is
measured) on core 0; this process opens 3,000 silent TCP connections to each port (REST and
gRPC), holds them for a second, measures the server's RSS, then closes them all and waits for
the server's RSS to come back (every `MEMORY_TRIM_INTERVAL_SECONDS`, 30 s by default, it checks
whether many connections closed and then hands free memory back): the figure is the RSS above
where it started, at most 45 s after the close.

    python -m bench.conn_flood [--smoke]
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.common import BenchError, Process, discovery_server
from bench.results import Row, Sample, Target, standalone

FIGURES = {
    "conn_rss_idle": (
        "idle connections (half REST, half gRPC): server RSS per connection",
        Target("none", 0),
    ),
    "conn_rss_after_flood": (
        "RSS after a 6,000-connection flood closed, above where it started",
        Target("max", 10, "MB"),
    ),
}
MB = 1e6


@dataclass(frozen=True)
class Size:
    per_port: int
    repeat: int
    settle: float  # longest wait for RSS to come back after the close


FULL = Size(3000, 3, 45.0)
SMOKE = Size(100, 1, 5.0)


def _raise_own_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed + 100:
        target = hard if hard == resource.RLIM_INFINITY else min(hard, max(needed + 100, soft))
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def _flood(server: Process, per_port: int) -> list[asyncio.StreamWriter]:
    writers = []
    for kind in ("REST", "gRPC"):
        for _ in range(per_port):
            _, writer = await asyncio.open_connection("127.0.0.1", server.ports[kind])
            writers.append(writer)
    return writers


async def repetition(size: Size) -> tuple[float, float]:
    """(RSS per idle connection in KB, RSS above the start after the close in MB)."""
    env = {"HEADER_TIMEOUT_SECONDS": "300", "LOG_LEVEL": "WARNING"}
    with discovery_server(**env) as server:
        await asyncio.sleep(1.0)
        before = server.rss()
        writers = await _flood(server, size.per_port)
        await asyncio.sleep(1.0)
        if server.proc.poll() is not None:
            raise BenchError(f"the server died under the flood: {server.tail()}")
        peak = server.rss()
        for writer in writers:
            writer.close()
        deadline = time.monotonic() + size.settle
        after = server.rss()
        while after - before > 10 * MB / 2 and time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            after = server.rss()
        with contextlib.suppress(Exception):
            for writer in writers:
                await writer.wait_closed()
    return (peak - before) / (2 * size.per_port) / 1024, (after - before) / MB


def measure(smoke: bool) -> list[Row]:
    size = SMOKE if smoke else FULL
    _raise_own_limit(2 * size.per_port)
    per_connection, left = [], []
    for _ in range(size.repeat):
        kb, mb = asyncio.run(repetition(size))
        per_connection.append(kb)
        left.append(mb)
    note = (
        f"{size.per_port} silent TCP connections to each port from the bench process; RSS "
        f"polled each second after the close, for up to {size.settle:g} s"
    )
    title, target = FIGURES["conn_rss_idle"]
    idle = Row("conn_rss_idle", title, target, Sample(per_connection, "KB"), notes=[note])
    title, target = FIGURES["conn_rss_after_flood"]
    flood = Row("conn_rss_after_flood", title, target, Sample(left, "MB"), notes=[note])
    return [idle, flood]


def cli(argv: Sequence[str] | None = None) -> None:
    standalone(measure, __doc__, argv)


if __name__ == "__main__":
    cli()
