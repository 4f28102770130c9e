"""Scraping `GET /metrics` with 10,000 instances in 100 services: time per scrape.

Each repetition starts a fresh server on core 0, registers 10,000 heartbeat-only instances (3
metadata entries each) in 100 services over gRPC, then scrapes `/metrics` 20 times one after
the other on one keep-alive connection (a lean HTTP/1.1 client on core 1). Every answer is
checked: status 200 and the `discovery_instances` samples adding up to every instance registered.
The figure is the median scrape time (request sent to the last byte read, over loopback); the
notes give the slowest scrape and the server's CPU time per scrape.

    python -m bench.metrics_scrape [--smoke]
"""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench import memory
from bench.common import GRPC_AUTH, BenchError, Process, discovery_server
from bench.grpc_load import Channels
from bench.rest_prober import RawHttp
from bench.results import Row, Sample, Target, standalone

FIGURES = {
    "metrics_scrape": (
        "GET /metrics with 10,000 instances in 100 services: time per scrape",
        Target("max", 50, "ms"),
    ),
}
_HEALTHY = re.compile(rb'^discovery_instances\{service="[^"]+",status="healthy"\} (\S+)$', re.M)


@dataclass(frozen=True)
class Size:
    instances: int
    services: int
    scrapes: int
    repeat: int


FULL = Size(instances=10_000, services=100, scrapes=20, repeat=3)
SMOKE = Size(instances=200, services=10, scrapes=3, repeat=1)


async def scrapes(process: Process, size: Size) -> tuple[list[float], float]:
    """Seconds of each scrape, and the server's CPU seconds per scrape."""
    sizing = memory.Size(size.instances, size.services, 1)
    async with Channels(f"127.0.0.1:{process.ports['gRPC']}", 8) as channels:
        result = await channels.each(memory.REGISTER, memory.requests(sizing), 64, GRPC_AUTH)
        result.checked("registrations")
    client = RawHttp(process.ports["REST"])
    await _scrape(client, size)  # warm-up: the first scrape builds what later ones reuse
    times = []
    cpu_before = process.cpu_seconds()
    for _ in range(size.scrapes):
        started = time.perf_counter()
        await _scrape(client, size)
        times.append(time.perf_counter() - started)
    return times, (process.cpu_seconds() - cpu_before) / size.scrapes


async def _scrape(client: RawHttp, size: Size) -> None:
    status, body = await client.get("/metrics")
    if status != 200:
        raise BenchError(f"GET /metrics: {status}")
    healthy = sum(float(value) for value in _HEALTHY.findall(body))
    if healthy != size.instances:
        raise BenchError(
            f"GET /metrics counted {healthy:g} healthy instances, not {size.instances}"
        )


def measure(smoke: bool) -> list[Row]:
    size = SMOKE if smoke else FULL
    medians, slowest, cpu = [], [], []
    for _ in range(size.repeat):
        with discovery_server() as process:
            times, cpu_per_scrape = asyncio.run(scrapes(process, size))
        medians.append(statistics.median(times) * 1000)
        slowest.append(max(times) * 1000)
        cpu.append(cpu_per_scrape * 1000)
    title, target = FIGURES["metrics_scrape"]
    row = Row("metrics_scrape", title, target, Sample(medians, "ms"))
    row.notes += [
        f"{size.instances:,} heartbeat-only instances in {size.services} services; "
        f"{size.scrapes} scrapes per repetition, each checked (200, healthy samples add up)",
        f"slowest scrape {max(slowest):.1f} ms; server CPU per scrape "
        f"{statistics.median(cpu):.1f} ms (median)",
    ]
    return [row]


def cli(argv: Sequence[str] | None = None) -> None:
    standalone(measure, __doc__, argv)


if __name__ == "__main__":
    cli()
