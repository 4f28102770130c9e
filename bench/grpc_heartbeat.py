"""gRPC heartbeats: unary `Heartbeat` against a bare grpc.aio server, KeepAlive against unary.
Unary `Register` against the bare server too, for the record (the targets table sets none).

Both servers hold the same heartbeat-only instances (registered up front). The load generator
(`bench.grpc_load`) runs on core 1: unary calls on several channels with many calls in flight,
each checked for status OK; then KeepAlive streams, each keeping its share of the instances
alive with a window of unacknowledged heartbeats, each ack checked for code 0 and the
instance. Registrations re-register the same instances at the same address (what a restarted
service does), each checked for status OK. Ours and the baseline are measured in turn,
repetition by repetition.

    python -m bench.grpc_heartbeat [--smoke]
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from bench.common import GRPC_AUTH, Process, Usage, discovery_server, python_module, usage
from bench.grpc_load import Channels, LoadResult, node_load
from bench.results import Row, Sample, Target, standalone
from bench.tools import node_or_python
from discovery.v1 import discovery_pb2 as pb

FIGURES = {
    "grpc_heartbeat": (
        "gRPC unary Heartbeat req/s vs bare grpc.aio unary",
        Target("ratio_min", 0.9),
    ),
    "keepalive": (
        "KeepAlive stream heartbeats/s vs our unary Heartbeat",
        Target("ratio_min", 3.0),
    ),
    "grpc_register": (
        "gRPC unary Register req/s vs bare grpc.aio unary",
        Target("none", 0),
    ),
}
REGISTER = "/discovery.v1.DiscoveryService/Register"
HEARTBEAT = "/discovery.v1.DiscoveryService/Heartbeat"
KEEPALIVE = "/discovery.v1.DiscoveryService/KeepAlive"


@dataclass(frozen=True)
class Size:
    seconds: float
    repeat: int
    instances: int
    channels: int
    in_flight: int  # unary calls per channel
    streams: int
    window: int  # unacknowledged heartbeats per stream
    warmup: float


FULL = Size(5, 3, 1000, 4, 16, 32, 32, 1.0)
SMOKE = Size(0.5, 1, 20, 2, 4, 4, 8, 0.0)


def names(size: Size) -> list[tuple[str, str]]:
    return [(f"svc-{n % 10}", f"i-{n}") for n in range(size.instances)]


def registrations(size: Size) -> list[bytes]:
    return [
        pb.RegisterRequest(
            service_name=service,
            instance_id=instance,
            host="10.0.0.5",
            port=8080,
            health_endpoint="",
            metadata={"version": "1.0.0", "zone": "eu-west-1a", "team": "core"},
        ).SerializeToString()
        for service, instance in names(size)
    ]


async def register_all(channels: Channels, size: Size) -> None:
    register = channels.channels[0].unary_unary(REGISTER, None, None)
    for request in registrations(size):
        await register(request, metadata=GRPC_AUTH)


@dataclass
class Runs:
    values: list[float]
    usages: list[Usage]

    def add(self, result: LoadResult, used: Usage, what: str) -> None:
        self.values.append(result.checked(what))
        self.usages.append(used)


Load = Callable[[Process, float], Awaitable[tuple[LoadResult, Usage]]]
UnaryLoad = Callable[[Process, float, str, list[bytes]], Awaitable[tuple[LoadResult, Usage]]]


@dataclass
class Measured:
    unary_ours: Runs
    unary_bare: Runs
    stream_ours: Runs
    register_ours: Runs
    register_bare: Runs


async def run(ours: Process, bare: Process, size: Size) -> Measured:
    runs = Measured(*(Runs([], []) for _ in range(5)))
    for server in (ours, bare):
        async with Channels(target(server), 1) as channels:
            await register_all(channels, size)
    unary, stream = loads(size)
    beats = [
        pb.HeartbeatRequest(service_name=s, instance_id=i).SerializeToString()
        for s, i in names(size)
    ]
    registers = registrations(size)
    if size.warmup:
        for server in (ours, bare):
            (await unary(server, size.warmup, HEARTBEAT, beats))[0].checked("warm-up")
            (await unary(server, size.warmup, REGISTER, registers))[0].checked("warm-up")
        (await stream(ours, size.warmup))[0].checked("warm-up")
    for _ in range(size.repeat):
        for runs_of, server, who in (
            (runs.unary_ours, ours, "ours"),
            (runs.unary_bare, bare, "bare grpc.aio"),
        ):
            runs_of.add(*await unary(server, size.seconds, HEARTBEAT, beats), f"{who}, Heartbeat")
        runs.stream_ours.add(*await stream(ours, size.seconds), "ours, KeepAlive")
        for runs_of, server, who in (
            (runs.register_ours, ours, "ours"),
            (runs.register_bare, bare, "bare grpc.aio"),
        ):
            runs_of.add(*await unary(server, size.seconds, REGISTER, registers), f"{who}, Register")
    return runs


def target(server: Process) -> str:
    return f"127.0.0.1:{server.ports['gRPC']}"


def loads(size: Size) -> tuple[UnaryLoad, Load]:
    """The unary and KeepAlive loads: from Node when it can be had, else from Python."""
    if node_or_python()[0] == "node":
        keepalives = [
            pb.KeepAliveRequest(service_name=s, instance_id=i).SerializeToString()
            for s, i in names(size)
        ]
        auth = dict(GRPC_AUTH)["authorization"]

        async def unary(
            server: Process, seconds: float, method: str, bodies: list[bytes]
        ) -> tuple[LoadResult, Usage]:
            return await asyncio.to_thread(
                node_load, target(server), "unary", method, bodies, server=server,
                seconds=seconds, connections=size.channels, in_flight=size.in_flight,
                authorization=auth,
            )  # fmt: skip

        async def stream(server: Process, seconds: float) -> tuple[LoadResult, Usage]:
            return await asyncio.to_thread(
                node_load, target(server), "keepalive", KEEPALIVE, keepalives, server=server,
                seconds=seconds, connections=size.channels, in_flight=size.window,
                streams=size.streams, authorization=auth,
            )  # fmt: skip

        return unary, stream

    async def python_unary(
        server: Process, seconds: float, method: str, bodies: list[bytes]
    ) -> tuple[LoadResult, Usage]:
        async with Channels(target(server), size.channels) as channels:
            with usage(server) as used:
                result = await channels.unary(method, bodies, size.in_flight, seconds, GRPC_AUTH)
        return result, used

    async def python_stream(server: Process, seconds: float) -> tuple[LoadResult, Usage]:
        async with Channels(target(server), size.channels) as channels:
            with usage(server) as used:
                result = await channels.keepalive(
                    names(size), size.streams, size.window, seconds, GRPC_AUTH
                )
        return result, used

    return python_unary, python_stream


def measure(smoke: bool) -> list[Row]:
    size = SMOKE if smoke else FULL
    with (
        discovery_server() as ours,
        python_module("bench.baselines.bare_grpc", kinds=("gRPC",)) as bare,
    ):
        runs = asyncio.run(run(ours, bare, size))
    unary_ours, unary_bare, stream_ours = runs.unary_ours, runs.unary_bare, runs.stream_ours
    client, why = node_or_python()
    generator = (
        "Node load generator (bench/grpc_load.cjs)"
        if client == "node"
        else f"Python load generator (bench/grpc_load.py; no Node: {why})"
    )
    unary_note = (
        f"{generator}: {size.channels} connections x {size.in_flight} calls in flight, "
        f"{size.seconds:g} s per run, {size.instances} instances; every grpc-status checked"
    )
    unary = vs_bare("grpc_heartbeat", unary_ours, unary_bare, [unary_note])
    title, target = FIGURES["keepalive"]
    stream = Row(
        "keepalive",
        title,
        target,
        Sample(stream_ours.values, "heartbeats/s"),
        Sample(unary_ours.values, "req/s"),
        "our unary Heartbeat",
        notes=[
            f"{generator}: {size.streams} KeepAlive streams over {size.channels} connections, "
            f"{size.window} heartbeats in flight on each; every ack checked (code 0, instance "
            "set)",
            per_cpu(stream_ours, unary_ours),
        ],
    )
    stream.note_usage("KeepAlive", stream_ours.usages)
    stream.note_usage("unary", unary_ours.usages)
    register = vs_bare(
        "grpc_register",
        runs.register_ours,
        runs.register_bare,
        [
            unary_note.replace("instances;", "instances re-registered at the same address;"),
            "no target: ours validates, authorizes and keeps history; the bare server stores",
        ],
    )
    return [unary, stream, register]


def vs_bare(key: str, ours: Runs, bare: Runs, notes: list[str]) -> Row:
    """A unary figure: our calls per second against the bare grpc.aio server's."""
    title, target = FIGURES[key]
    row = Row(
        key,
        title,
        target,
        Sample(ours.values, "req/s"),
        Sample(bare.values, "req/s"),
        "bare grpc.aio",
        notes=notes,
    )
    row.note_usage("ours", ours.usages)
    row.note_usage("bare grpc.aio", bare.usages)
    return row


def per_cpu(stream: Runs, unary: Runs) -> str:
    """Heartbeats per second of server CPU: what one core could carry, whoever set the pace."""

    def rate(runs: Runs) -> float:
        values = sorted(
            v / max(u.server, 1e-9) for v, u in zip(runs.values, runs.usages, strict=True)
        )
        return values[len(values) // 2]

    return (
        f"per second of server CPU: KeepAlive {rate(stream):,.0f}, unary {rate(unary):,.0f} "
        f"({rate(stream) / rate(unary):.2f}x)"
    )


def cli(argv: Sequence[str] | None = None) -> None:
    standalone(measure, __doc__, argv)


if __name__ == "__main__":
    cli()
