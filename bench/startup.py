"""Start-up: from spawning `python -m discovery` to serving both ports.

Each repetition spawns the server on core 0 (the clock starts just before the spawn) and waits
for its two listening lines, then sends a first request on each port at once: REST `GET /health`
(checked for 200) and the gRPC health service's `Check` (checked for SERVING). The figure is the
time until both answered; the time of the listening lines is noted.

    python -m bench.startup [--smoke]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.common import BenchError, Process, server_env
from bench.rest_prober import RawHttp
from bench.results import Row, Sample, Target, standalone

FIGURES = {
    "startup": (
        "process start to serving both ports (first answer on each)",
        Target("max", 1, "s"),
    ),
}


@dataclass(frozen=True)
class Size:
    repeat: int


FULL = Size(repeat=5)
SMOKE = Size(repeat=1)


async def first_answers(process: Process) -> tuple[float, float]:
    """Monotonic times of the first REST and gRPC answers."""

    async def rest() -> float:
        client = RawHttp(process.ports["REST"])
        status, _ = await client.get("/health")
        if status != 200:
            raise BenchError(f"GET /health: {status}")
        return time.monotonic()

    async def health() -> float:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{process.ports['gRPC']}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=""))
        if answer.status != health_pb2.HealthCheckResponse.SERVING:
            raise BenchError(f"gRPC health: {answer.status}")
        return time.monotonic()

    rest_at, grpc_at = await asyncio.gather(rest(), health())
    return rest_at, grpc_at


def once(
    env: dict[str, str] | None = None, serving: Callable[[Process], None] | None = None
) -> tuple[float, float, float, float]:
    """Seconds from the spawn to: both first answers, both listening lines, the REST answer,
    the gRPC answer. `env` adds to the server's environment; `serving(process)` is called once
    both answered, before the stop (to take its RSS or read its log)."""
    process = Process([sys.executable, "-m", "discovery"], server_env(**(env or {})))
    try:
        process.wait_listening(("REST", "gRPC"))
        rest_at, grpc_at = asyncio.run(first_answers(process))
        if serving is not None:
            serving(process)
    finally:
        process.stop()
    spawned = process.started_at
    lines = max(process.listening_at.values())
    return max(rest_at, grpc_at) - spawned, lines - spawned, rest_at - spawned, grpc_at - spawned


def measure(smoke: bool) -> list[Row]:
    size = SMOKE if smoke else FULL
    runs = [once() for _ in range(size.repeat)]
    title, target = FIGURES["startup"]
    row = Row("startup", title, target, Sample([run[0] for run in runs], "s"))
    slowest = max(runs)
    row.notes += [
        f"{size.repeat} starts; both listening lines after "
        f"{statistics.median(run[1] for run in runs):.3f} s (median); first answers checked "
        "(REST 200, gRPC health SERVING)",
        f"slowest start: lines {slowest[1]:.3f} s, REST answer {slowest[2]:.3f} s, gRPC "
        f"answer {slowest[3]:.3f} s",
    ]
    return [row]


def cli(argv: Sequence[str] | None = None) -> None:
    standalone(measure, __doc__, argv)


if __name__ == "__main__":
    cli()
