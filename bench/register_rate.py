"""Register and heartbeat requests per second over REST and gRPC, next to bare baselines.

    python -m bench.register_rate [--seconds 3] [--repeat 3] [--workers 32] [--smoke]

The server under test runs pinned to core 0 and the load generator to core 1. Every response is
checked (HTTP status 200, gRPC status OK); a failed request counts against the figure and is
reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence

import grpc

from bench.common import (
    SECRET,
    Figure,
    RawHttp,
    closed_loop,
    discovery_server,
    module_server,
    pin_self,
    table,
)
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc

GRPC_AUTH = (("authorization", f"Bearer {SECRET}"),)


def register_body(worker: int, n: int) -> bytes:
    return json.dumps(
        {
            "service_name": f"svc-{worker % 10}",
            "instance_id": f"w{worker}-{n}",
            "host": "10.0.0.5",
            "port": 8080,
            "health_endpoint": None,
            "metadata": {"version": "1.0.0", "zone": "a", "team": "core"},
        }
    ).encode()


def heartbeat_body(worker: int) -> bytes:
    return json.dumps(
        {"service_name": f"svc-{worker % 10}", "instance_id": f"hb-{worker}"}
    ).encode()


async def rest_load(port: int, op: str, workers: int, seconds: float) -> tuple[int, int]:
    clients = [RawHttp(port) for _ in range(workers)]
    for worker, client in enumerate(clients):  # the instances heartbeats will name
        body = register_body(worker, 0).replace(f"w{worker}-0".encode(), f"hb-{worker}".encode())
        assert await client.request("POST", "/v1/discovery/register", body) == 200

    async def call(worker: int, n: int) -> bool:
        if op == "register":
            body, path = register_body(worker, n), "/v1/discovery/register"
        else:
            body, path = heartbeat_body(worker), "/v1/discovery/heartbeat"
        return await clients[worker].request("POST", path, body) == 200

    try:
        return await closed_loop(call, workers, seconds)
    finally:
        for client in clients:
            await client.close()


async def grpc_load(port: int, op: str, workers: int, seconds: float) -> tuple[int, int]:
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(4)]
    stubs = [pb_grpc.DiscoveryServiceStub(channel) for channel in channels]
    for worker in range(workers):
        await stubs[worker % 4].Register(
            pb.RegisterRequest(
                service_name=f"svc-{worker % 10}",
                instance_id=f"hb-{worker}",
                host="10.0.0.5",
                port=8080,
                health_endpoint="",
            ),
            metadata=GRPC_AUTH,
        )

    async def call(worker: int, n: int) -> bool:
        stub = stubs[worker % 4]
        try:
            if op == "register":
                await stub.Register(
                    pb.RegisterRequest(
                        service_name=f"svc-{worker % 10}",
                        instance_id=f"w{worker}-{n}",
                        host="10.0.0.5",
                        port=8080,
                        health_endpoint="",
                        metadata={"version": "1.0.0", "zone": "a", "team": "core"},
                    ),
                    metadata=GRPC_AUTH,
                )
            else:
                await stub.Heartbeat(
                    pb.HeartbeatRequest(
                        service_name=f"svc-{worker % 10}", instance_id=f"hb-{worker}"
                    ),
                    metadata=GRPC_AUTH,
                )
        except grpc.aio.AioRpcError:
            return False
        return True

    try:
        return await closed_loop(call, workers, seconds)
    finally:
        for channel in channels:
            await channel.close()


Load = Callable[[int, str, int, float], Awaitable[tuple[int, int]]]


async def measure(
    load: Load, port: int, op: str, workers: int, seconds: float, repeat: int
) -> Figure:
    values = []
    for _ in range(repeat):
        ok, failed = await load(port, op, workers, seconds)
        if failed:
            raise SystemExit(f"{op} on port {port}: {failed} requests failed")
        values.append(ok / seconds)
    return Figure(op, values, "req/s")


async def main(seconds: float, repeat: int, workers: int) -> str:
    pin_self()
    rows = []
    # Registrations pile up during the run: lift the limits so none is refused.
    limits = {"MAX_INSTANCES": "10000000", "MAX_INSTANCES_PER_SERVICE": "10000000"}
    plan: list[tuple[str, Load, str, str]] = [
        ("REST POST /{op}", rest_load, "REST", "bench.baselines.bare_fastapi"),
        ("gRPC {Op}", grpc_load, "gRPC", "bench.baselines.bare_grpc"),
    ]
    for op in ("register", "heartbeat"):
        for label, load, kind, baseline in plan:
            with discovery_server(**limits) as ours, module_server(baseline) as bare:
                mine = await measure(load, ours.ports[kind], op, workers, seconds, repeat)
                base = await measure(load, bare.ports[kind], op, workers, seconds, repeat)
            rows.append((label.format(op=op, Op=op.capitalize()), mine, base))
    return table(rows)


def cli(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--smoke", action="store_true", help="tiny run, to check the script works")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seconds, args.repeat, args.workers = 0.3, 1, 2
    print(asyncio.run(main(args.seconds, args.repeat, args.workers)))


if __name__ == "__main__":
    cli()
