"""Heartbeats over KeepAlive streams against unary Heartbeat calls, in the same run.

The real server runs in its own process, with a write secret as in production; a client process
sends heartbeats for 100 registered instances as fast as the server takes them, first as unary
Heartbeat calls, then on KeepAlive streams (a bounded number of requests in flight per stream).
The bench prints heartbeats per second, and heartbeats per CPU-second of the server process: the
cost on one core, which does not depend on how fast the client side is.

    python -m bench.keepalive            # 5 s per mode
    python -m bench.keepalive --smoke    # 1 s per mode
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence

import grpc

from bench._common import discovery_server, spawn
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc

SECRET = "bench-secret"
AUTH = (("authorization", f"Bearer {SECRET}"),)
INSTANCES = 100
CONCURRENCY = 32  # unary calls in flight, and KeepAlive streams
IN_FLIGHT = 32  # unacknowledged requests per stream


def _name(n: int) -> tuple[str, str]:
    return ("bench", f"bench-{n % INSTANCES}")


# -- the load (a child process) ---------------------------------------------------------------


async def load(target: str, mode: str, seconds: float) -> None:
    """Send heartbeats for `seconds`; print how many were acknowledged."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.DiscoveryServiceStub(channel)
        worker = _unary if mode == "unary" else _stream
        deadline = time.monotonic() + seconds
        counts = await asyncio.gather(*(worker(stub, n, deadline) for n in range(CONCURRENCY)))
    print(f"count {sum(counts)}", flush=True)


async def _unary(stub: pb_grpc.DiscoveryServiceStub, worker: int, deadline: float) -> int:
    count = 0
    while time.monotonic() < deadline:
        service, instance = _name(worker + count * CONCURRENCY)
        request = pb.HeartbeatRequest(service_name=service, instance_id=instance)
        await stub.Heartbeat(request, metadata=AUTH)
        count += 1
    return count


async def _stream(stub: pb_grpc.DiscoveryServiceStub, worker: int, deadline: float) -> int:
    call = stub.KeepAlive(metadata=AUTH)  # type: ignore[call-arg]  # aio calls are written to
    slots = asyncio.Semaphore(IN_FLIGHT)
    acked = 0

    async def read() -> None:
        nonlocal acked
        async for ack in call:
            assert ack.code == 0, ack.message
            acked += 1
            slots.release()

    reader = asyncio.create_task(read())
    sent = 0
    while time.monotonic() < deadline:
        await slots.acquire()
        service, instance = _name(worker + sent * CONCURRENCY)
        await call.write(pb.KeepAliveRequest(service_name=service, instance_id=instance))
        sent += 1
    counted = acked  # what was acknowledged within the time; the rest drains after
    await call.done_writing()
    await reader
    return counted


# -- the driver -------------------------------------------------------------------------------


async def main(seconds: float) -> None:
    env = {"SERVICE_DISCOVERY_SECRET": SECRET, "LOG_LEVEL": "INFO"}
    async with discovery_server(**env) as (server, port):
        target = f"127.0.0.1:{port}"
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.DiscoveryServiceStub(channel)
            for n in range(INSTANCES):
                service, instance = _name(n)
                request = pb.RegisterRequest(
                    service_name=service,
                    instance_id=instance,
                    host="127.0.0.1",
                    port=8000,
                    health_endpoint="",
                )
                await stub.Register(request, metadata=AUTH)
        print(
            f"Heartbeats for {INSTANCES} instances, {seconds:g} s per mode, {CONCURRENCY} "
            f"concurrent calls or streams ({IN_FLIGHT} in flight per stream)"
        )
        print(f"{'mode':>10} {'heartbeats/s':>13} {'per server CPU-s':>17}")
        results = {}
        for mode in ("unary", "keepalive"):
            cpu = server.cpu_seconds()
            client = await spawn(
                [
                    "-m",
                    "bench.keepalive",
                    "--role",
                    "load",
                    "--target",
                    target,
                    "--mode",
                    mode,
                    "--seconds",
                    str(seconds),
                ]
            )
            try:
                count = int((await client.line(seconds + 60)).split()[1])
            finally:
                await client.stop()
            used = max(server.cpu_seconds() - cpu, 0.01)  # counted in 10 ms clock ticks
            results[mode] = (count / seconds, count / used)
            print(f"{mode:>10} {count / seconds:>13,.0f} {count / used:>17,.0f}", flush=True)
        rate = results["keepalive"][0] / results["unary"][0]
        per_cpu = results["keepalive"][1] / results["unary"][1]
        print(f"{'ratio':>10} {rate:>12.1f}x {per_cpu:>16.1f}x")


def cli(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="1 s per mode")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--role", choices=["driver", "load"], default="driver")
    parser.add_argument("--target")
    parser.add_argument("--mode", choices=["unary", "keepalive"])
    args = parser.parse_args(argv)
    if args.role == "load":
        asyncio.run(load(args.target, args.mode, args.seconds))
    else:
        asyncio.run(main(1.0 if args.smoke else args.seconds))


if __name__ == "__main__":
    cli(sys.argv[1:])
