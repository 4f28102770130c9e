"""xDS fan-out: one health change to 100 ADS streams, beside the same change's Watch fan-out.

Each repetition starts a fresh server on core 0 with service `bench` (three heartbeat-only
instances, one of them `flip`) and a follower process on core 1 (`bench.xds_clients`: 100 ADS
streams subscribed to the assignment of `bench`, acknowledging every response, or 100
healthy-only Watch streams). A change is a health change of `flip`: it turns unhealthy when
the KeepAlive stream holding it is cancelled (a break), and healthy again with a Heartbeat.
Its time runs from just before the change is made until the last of the streams has the new
healthy set (CLOCK_MONOTONIC, shared by the processes); the figure is the p99 over 20 changes
(their worst). xDS and Watch repetitions alternate, so a slow spell of the machine hits both.

    python -m bench.xds_fanout [--smoke]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2 as xds_pb

from bench.common import CLIENT_CPU, GRPC_AUTH, ROOT, BenchError, Process, discovery_server
from bench.results import Row, Sample, Target, percentile, standalone
from bench.tools import node_or_python
from bench.xds_clients import ENDPOINTS, FLIP, SERVICE
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc

FIGURES = {
    "xds_100_vs_watch": (
        "one health change to 100 xDS streams, time to the last (p99 of 20) vs the same "
        "change's Watch fan-out to 100 watchers",
        Target("ratio_max", 1.5),
    ),
}


@dataclass(frozen=True)
class Size:
    streams: int
    changes: int
    repeat: int


FULL = Size(100, 20, 5)
SMOKE = Size(10, 4, 1)


class Flipper:
    """Turns `flip` unhealthy (its KeepAlive stream breaks) and healthy (a Heartbeat)."""

    def __init__(self, stub: pb_grpc.DiscoveryServiceStub) -> None:
        self.stub: Any = stub  # grpc-stubs types the calls as synchronous
        self.healthy = True
        self.keepalive: Any = None

    async def register(self) -> None:
        for instance in ("steady-1", "steady-2", FLIP):
            request = pb.RegisterRequest(
                service_name=SERVICE,
                instance_id=instance,
                host="127.0.0.1",
                port=9000 + len(instance),
                health_endpoint="",
            )
            await self.stub.Register(request, metadata=GRPC_AUTH)

    async def prepare(self) -> None:
        """Before an untimed moment: hold `flip` by a KeepAlive stream when it is to go down."""
        if self.healthy:
            call = self.stub.KeepAlive(metadata=GRPC_AUTH)
            await call.write(pb.KeepAliveRequest(service_name=SERVICE, instance_id=FLIP))
            if (await call.read()).code != 0:
                raise BenchError("KeepAlive of flip refused")
            self.keepalive = call

    async def change(self) -> bool:
        """Make the change; returns whether `flip` is now healthy."""
        if self.healthy:
            self.keepalive.cancel()
        else:
            request = pb.HeartbeatRequest(service_name=SERVICE, instance_id=FLIP)
            await self.stub.Heartbeat(request, metadata=GRPC_AUTH)
        self.healthy = not self.healthy
        return self.healthy


@dataclass(frozen=True)
class Run:
    """One repetition: p99 and p50 of the change times, CPU seconds per change of each side."""

    p99: float
    p50: float
    server_cpu: float
    client_cpu: float


def followers(kind: str, target: str, streams: int) -> Process:
    """The follower process: Node (its own HTTP/2 client) when it can be had, else Python."""
    common = ["--target", target, "--kind", kind, "--streams", str(streams)]
    if node_or_python()[0] == "python":
        return Process([sys.executable, "-m", "bench.xds_clients", *common], cpu=CLIENT_CPU)
    if kind == "xds":
        request = xds_pb.DiscoveryRequest(type_url=ENDPOINTS, resource_names=[SERVICE])
        ack = request.SerializeToString().hex()
        request.node.id = "bench"
        extra = ["--request", request.SerializeToString().hex(), "--ack", ack]
    else:
        watch = pb.WatchRequest(service_names=[SERVICE], healthy_only=True)
        extra = ["--request", watch.SerializeToString().hex()]
    script = str(ROOT / "bench" / "xds_clients.cjs")
    return Process(["node", script, *common, *extra], cpu=CLIENT_CPU)


def _client() -> str:
    client, why = node_or_python()
    return "Node (bench/xds_clients.cjs)" if client == "node" else f"Python (no Node: {why})"


async def repetition(kind: str, size: Size) -> Run:
    with discovery_server() as server:
        target = f"127.0.0.1:{server.ports['gRPC']}"
        async with grpc.aio.insecure_channel(target) as channel:
            flipper = Flipper(pb_grpc.DiscoveryServiceStub(channel))
            await flipper.register()
            clients = followers(kind, target, size.streams)
            try:
                if (line := await clients.aline(120)) != "ready":
                    raise BenchError(f"{kind} clients: {line}")
                await asyncio.sleep(0.5)
                latencies = []
                cpu, client_cpu = server.cpu_seconds(), clients.cpu_seconds()
                for seq in range(size.changes):
                    await flipper.prepare()
                    await asyncio.sleep(0.05)
                    sent = time.monotonic()
                    healthy = await flipper.change()
                    line = await clients.aline(60)
                    done, state, last = line.split()
                    if (done, state) != ("done", str(int(healthy))):
                        raise BenchError(f"{kind} clients, change {seq}: {line}")
                    latencies.append(float(last) - sent)
                    await asyncio.sleep(0.05)
                server_cpu = (server.cpu_seconds() - cpu) / size.changes
                client_cpu = (clients.cpu_seconds() - client_cpu) / size.changes
            finally:
                clients.stop()
    return Run(percentile(latencies, 99), percentile(latencies, 50), server_cpu, client_cpu)


def measure(smoke: bool) -> list[Row]:
    size = SMOKE if smoke else FULL
    runs: dict[str, list[Run]] = {"xds": [], "watch": []}
    for _ in range(size.repeat):
        for kind in runs:
            runs[kind].append(asyncio.run(repetition(kind, size)))
    title, target = FIGURES["xds_100_vs_watch"]
    ms = 1000
    row = Row(
        "xds_100_vs_watch",
        title,
        target,
        Sample([r.p99 * ms for r in runs["xds"]], "ms"),
        Sample([r.p99 * ms for r in runs["watch"]], "ms"),
        "Watch fan-out (healthy-only)",
    )
    row.notes.append(
        f"{size.streams} streams ({size.changes} changes per repetition, alternately a KeepAlive "
        f"break and a Heartbeat of one heartbeat-only instance) in one {_client()} process on "
        "core 1, 25 streams per connection; ADS streams acknowledge every response"
    )
    for kind, name in (("xds", "xDS"), ("watch", "Watch")):
        p50 = statistics.median(r.p50 for r in runs[kind])
        server = statistics.median(r.server_cpu for r in runs[kind])
        client = statistics.median(r.client_cpu for r in runs[kind])
        note = (
            f"{name}: p50 {p50 * ms:.1f} ms; per change the server used {server * ms:.1f} ms "
            f"of CPU, the follower process {client * ms:.1f} ms"
        )
        # CPU time comes in 10 ms clock ticks: too few changes cannot tell.
        if client > 0.8 * p50 and client * size.changes >= 0.05:
            note += " -- LOAD GENERATOR BOUND (the followers were busy for most of each change)"
            row.load_bound = True
        row.notes.append(note)
    return [row]


def cli(argv: Sequence[str] | None = None) -> None:
    standalone(measure, __doc__, argv)


if __name__ == "__main__":
    cli()
