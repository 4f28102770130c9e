"""Probe capacity: the server probing a local fleet of 10,000 instances, REST latency meanwhile.

A fake fleet (`bench.fleet`, one process on core 1 answering `GET /i/{n}` and recording when
each instance was probed) and the server (core 0) with a probe interval that asks for a little
more than the target rate (10,000 instances every 9.5 s: 1,053 probes/s; the rate cap is raised
to 1,100/s so it does not bind). The instances are registered over gRPC; after a warm-up of 1.5
intervals, three windows of one interval each are measured: probes per second reaching the
fleet, and the p99 of `GET /healthy` sent by a REST prober (`bench.rest_prober`, its own process
on core 1, 50 reads/s of random services of 100 instances).

    python -m bench.probe_fleet [--smoke]
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

from bench.common import CLIENT_CPU, GRPC_AUTH, BenchError, Process, discovery_server, python_module
from bench.grpc_load import Channels
from bench.results import Row, Sample, Target, percentile, standalone
from discovery.v1 import discovery_pb2 as pb

FIGURES = {
    "probes_per_second": (
        "probes per second, 10,000-instance local fleet",
        Target("min", 1000, "/s"),
    ),
    "probes_rest_p99": (
        "REST GET /healthy p99 while probing",
        Target("max", 50, "ms"),
    ),
}
REGISTER = "/discovery.v1.DiscoveryService/Register"


@dataclass(frozen=True)
class Size:
    instances: int
    services: int
    interval: float
    max_rate: int
    windows: int
    reads: int = 50  # REST reads per second


FULL = Size(instances=10_000, services=100, interval=9.5, max_rate=1100, windows=3)
# Few reads: each read is due 1/rate after the last, so on a busy machine a fast rate falls
# behind and a one-second window could get none of them.
SMOKE = Size(instances=200, services=4, interval=1.0, max_rate=1100, windows=1, reads=5)


def requests(size: Size, port: int) -> list[bytes]:
    return [
        pb.RegisterRequest(
            service_name=f"svc-{n % size.services}",
            instance_id=f"i-{n}",
            host="127.0.0.1",
            port=port,
            health_endpoint=f"/i/{n}",
        ).SerializeToString()
        for n in range(size.instances)
    ]


@dataclass
class Window:
    rate: float
    p99: float  # seconds
    reads: int
    server_share: float


async def probing(server: Process, fleet_port: int, size: Size) -> tuple[list[Window], str]:
    async with Channels(f"127.0.0.1:{server.ports['gRPC']}", 4) as channels:
        result = await channels.each(REGISTER, requests(size, fleet_port), 32, GRPC_AUTH)
        result.checked("registrations")
    command = [sys.executable, "-m", "bench.rest_prober", "--port", str(server.ports["REST"])]
    command += ["--services", str(size.services), "--rate", str(size.reads)]
    prober = Process(command, cpu=CLIENT_CPU)
    try:
        await asyncio.sleep(1.5 * size.interval)
        if (line := await prober.aline(30)) != "ready":
            raise BenchError(f"REST prober: {line}")
        edges, cpu = [time.monotonic()], [server.cpu_seconds()]
        for _ in range(size.windows):
            await asyncio.sleep(size.interval)
            edges.append(time.monotonic())
            cpu.append(server.cpu_seconds())
        assert prober.proc.stdin is not None
        prober.proc.stdin.close()
        line = await prober.aline(30)
        if line.startswith("error"):
            raise BenchError(f"REST prober: {line}")
    finally:
        prober.stop()
    reads = json.loads(line)
    hits = await asyncio.to_thread(fleet_hits, fleet_port)
    windows = []
    for k, (start, end) in enumerate(itertools.pairwise(edges)):
        took = [t for sent, t in reads if start <= sent < end]
        probes = sum(1 for times in hits for at in times if start <= at < end)
        share = (cpu[k + 1] - cpu[k]) / (end - start)
        windows.append(Window(probes / (end - start), percentile(took, 99), len(took), share))
    return windows, spread(hits, edges[0], edges[-1], size)


def fleet_hits(port: int) -> list[list[float]]:
    """When each instance was probed (the fleet's record)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/__hits", timeout=60) as answer:
        hits: list[list[float]] = json.load(answer)
    return hits


def spread(hits: list[list[float]], start: float, end: float, size: Size) -> str:
    """How evenly the probes came: gaps between two probes of one instance, never probed."""
    gaps = [
        later - earlier
        for times in hits
        for earlier, later in itertools.pairwise(times)
        if start <= later < end
    ]
    never = sum(1 for times in hits if not times)
    if not gaps:
        return f"no instance probed twice; never probed: {never}"
    return (
        f"gap between two probes of one instance: p50 {percentile(gaps, 50):.2f} s, p99 "
        f"{percentile(gaps, 99):.2f} s (interval {size.interval:g} s); never probed: {never}"
    )


def measure(smoke: bool) -> list[Row]:
    size = SMOKE if smoke else FULL
    env = {
        "HEALTH_CHECK_INTERVAL_SECONDS": str(size.interval),
        "HEALTH_CHECK_TIMEOUT_SECONDS": "2",
        "HEALTH_CHECK_MAX_PROBES_PER_SECOND": str(size.max_rate),
    }
    fleet_args = ("--count", str(size.instances), "--ports", "1")
    with python_module("bench.fleet", *fleet_args, cpu=CLIENT_CPU) as fleet:
        fleet_port = int(fleet.line(30).rsplit(" ", 1)[1])
        with discovery_server(**env) as server:
            windows, how = asyncio.run(probing(server, fleet_port, size))
            warnings = [line.strip() for line in server.lines if "WARNING" in line]
    title, target = FIGURES["probes_per_second"]
    asked = size.instances / size.interval
    rate = Row("probes_per_second", title, target, Sample([w.rate for w in windows], "/s"))
    rate.notes += [
        f"{size.instances:,} instances every {size.interval:g} s ({asked:,.0f}/s asked, cap "
        f"{size.max_rate}/s); {size.windows} windows of one interval after a warm-up of 1.5; "
        f"server core {statistics.median(w.server_share for w in windows):.0%}",
        how,
        *(f"server log: {line}" for line in warnings[:5]),
    ]
    title, target = FIGURES["probes_rest_p99"]
    p99 = Row("probes_rest_p99", title, target, Sample([w.p99 * 1000 for w in windows], "ms"))
    p99.notes.append(
        f"REST prober in its own process, {size.reads} reads/s; "
        f"{sum(w.reads for w in windows)} reads"
    )
    return [rate, p99]


def cli(argv: Sequence[str] | None = None) -> None:
    standalone(measure, __doc__, argv)


if __name__ == "__main__":
    cli()
