"""A burst of registrations: 10,000 from 200 concurrent gRPC clients, REST reads meanwhile.

Each repetition starts a fresh server, connects 200 gRPC channels (one connection each, the
200 clients), and starts a REST prober in its own process (`bench.rest_prober`, `GET /healthy`
of the services being filled, 200 a second). Then each client registers its 50 heartbeat-only
instances (3 metadata entries) in its own service, one call after the other, every status
checked. Figures: the time from the first call to the last answer, and the p99 of the REST reads
sent within that time.

    python -m bench.register_burst [--smoke]
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.common import CLIENT_CPU, GRPC_AUTH, BenchError, Process, discovery_server, usage
from bench.grpc_load import Channels
from bench.results import Row, Sample, Target, percentile, standalone
from discovery.v1 import discovery_pb2 as pb

FIGURES = {
    "burst_10k_time": (
        "10,000 registrations from 200 concurrent gRPC clients: total time",
        Target("max", 5, "s"),
    ),
    "burst_healthy_p99": (
        "GET /healthy p99 during those registrations",
        Target("max", 100, "ms"),
    ),
}
REGISTER = "/discovery.v1.DiscoveryService/Register"


@dataclass(frozen=True)
class Size:
    clients: int
    each: int  # registrations per client
    repeat: int


FULL = Size(clients=200, each=50, repeat=3)
SMOKE = Size(clients=20, each=10, repeat=1)


def requests(size: Size) -> list[bytes]:
    """Ordered so that worker k of `clients` gets client k's instances (see Channels.each)."""
    bodies = [b""] * (size.clients * size.each)
    for client in range(size.clients):
        for n in range(size.each):
            bodies[n * size.clients + client] = pb.RegisterRequest(
                service_name=f"svc-{client}",
                instance_id=f"svc-{client}-{n}",
                host="10.0.0.5",
                port=8000 + n,
                health_endpoint="",
                metadata={"version": "1.4.2", "zone": "eu-west-1a", "team": "payments"},
            ).SerializeToString()
    return bodies


@dataclass
class Burst:
    seconds: float
    reads: list[float]  # latencies of the REST reads sent during the burst
    server_share: float
    client_share: float


async def burst(server: Process, size: Size) -> Burst:
    bodies = requests(size)
    command = [sys.executable, "-m", "bench.rest_prober", "--port", str(server.ports["REST"])]
    prober = Process([*command, "--services", str(size.clients)], cpu=CLIENT_CPU)
    try:
        if (line := await prober.aline(30)) != "ready":
            raise BenchError(f"REST prober: {line}")
        async with Channels(f"127.0.0.1:{server.ports['gRPC']}", size.clients) as channels:
            await asyncio.sleep(0.2)
            started = time.monotonic()
            with usage(server) as used:
                result = await channels.each(REGISTER, bodies, size.clients, GRPC_AUTH)
            ended = time.monotonic()
            result.checked(f"{len(bodies)} registrations")
        assert prober.proc.stdin is not None
        prober.proc.stdin.close()
        line = await prober.aline(30)
        if line.startswith("error"):
            raise BenchError(f"REST prober: {line}")
    finally:
        prober.stop()
    reads = [took for sent, took in json.loads(line) if started <= sent <= ended]
    if not reads:
        raise BenchError("no REST read was sent during the burst")
    return Burst(result.seconds, reads, used.server, used.client)


def measure(smoke: bool) -> list[Row]:
    size = SMOKE if smoke else FULL
    bursts = []
    for _ in range(size.repeat):
        with discovery_server() as server:
            bursts.append(asyncio.run(burst(server, size)))
    total = size.clients * size.each
    title, target = FIGURES["burst_10k_time"]
    took = Row("burst_10k_time", title, target, Sample([b.seconds for b in bursts], "s"))
    took.notes.append(
        f"{total:,} Register calls, {size.each} in a row by each of {size.clients} clients "
        f"(one connection each, connected beforehand); every status checked; "
        f"{statistics.median(total / b.seconds for b in bursts):,.0f} registrations/s; server "
        f"core {statistics.median(b.server_share for b in bursts):.0%}, load generator core "
        f"{statistics.median(b.client_share for b in bursts):.0%}"
    )
    if any(b.client_share > 0.9 and b.server_share < 0.85 for b in bursts):
        took.notes.append("LOAD GENERATOR BOUND (the server had CPU to spare)")
        took.load_bound = True
    title, target = FIGURES["burst_healthy_p99"]
    p99 = [percentile(b.reads, 99) * 1000 for b in bursts]
    reads = Row("burst_healthy_p99", title, target, Sample(p99, "ms"))
    reads.notes.append(
        f"REST prober in its own process on core 1, 200 reads/s of random services being filled; "
        f"{statistics.median(len(b.reads) for b in bursts):.0f} reads within the burst, max "
        f"{max(max(b.reads) for b in bursts) * 1000:.1f} ms"
    )
    return [took, reads]


def cli(argv: Sequence[str] | None = None) -> None:
    standalone(measure, __doc__, argv)


if __name__ == "__main__":
    cli()
