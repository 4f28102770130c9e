"""Registry memory: the server's RSS growth with 100,000 registered instances.

Each repetition starts a fresh server (default limits: 100,000 instances, 10,000 per service),
takes its RSS once it serves, registers 100,000 heartbeat-only instances (no probes run) with 3
metadata entries each over gRPC (8 channels, 64 callers, every status checked) in 100 services,
and takes its RSS again a second later. MB here is 10^6 bytes.

    python -m bench.memory [--smoke]
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.common import GRPC_AUTH, Process, discovery_server
from bench.grpc_load import Channels
from bench.results import Row, Sample, Target, standalone
from discovery.v1 import discovery_pb2 as pb

FIGURES = {
    "registry_100k_rss": (
        "100,000 registered instances (3 metadata entries each): server RSS growth",
        Target("max", 100, "MB"),
    ),
}
REGISTER = "/discovery.v1.DiscoveryService/Register"


@dataclass(frozen=True)
class Size:
    instances: int
    services: int
    repeat: int


FULL = Size(instances=100_000, services=100, repeat=3)
SMOKE = Size(instances=500, services=5, repeat=1)


def requests(size: Size) -> list[bytes]:
    return [
        pb.RegisterRequest(
            service_name=f"svc-{n % size.services:03d}",
            instance_id=f"instance-{n:06d}",
            host=f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}",
            port=8080,
            health_endpoint="",
            metadata={"version": "1.4.2", "zone": f"eu-west-1{'abc'[n % 3]}", "team": "payments"},
        ).SerializeToString()
        for n in range(size.instances)
    ]


async def growth(process: Process, size: Size) -> tuple[float, float]:
    """(RSS growth in MB, registrations per second)."""
    bodies = requests(size)
    async with Channels(f"127.0.0.1:{process.ports['gRPC']}", 8) as channels:
        await asyncio.sleep(0.5)
        before = process.rss()
        result = await channels.each(REGISTER, bodies, 64, GRPC_AUTH)
        rate = result.checked("registrations")
        await asyncio.sleep(1.0)
        after = process.rss()
    return (after - before) / 1e6, rate


def measure(smoke: bool) -> list[Row]:
    size = SMOKE if smoke else FULL
    grown, rates = [], []
    for _ in range(size.repeat):
        with discovery_server() as process:
            time.sleep(0.5)
            mb, rate = asyncio.run(growth(process, size))
        grown.append(mb)
        rates.append(rate)
    title, target = FIGURES["registry_100k_rss"]
    row = Row("registry_100k_rss", title, target, Sample(grown, "MB"))
    row.notes.append(
        f"{size.instances:,} instances in {size.services} services, registered at "
        f"{sorted(rates)[len(rates) // 2]:,.0f}/s over gRPC; every status checked"
    )
    return [row]


def cli(argv: Sequence[str] | None = None) -> None:
    standalone(measure, __doc__, argv)


if __name__ == "__main__":
    cli()
