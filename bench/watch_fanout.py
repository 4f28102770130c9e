"""Watch fan-out: one change to N watchers, against a bare grpc.aio fan-out in the same run.

For each N (1,000 and 10,000 by default) and each server (this project's, and a bare grpc.aio
server-streaming fan-out that hands one pre-serialized message to every stream's queue), each on
the default asyncio loop and on uvloop (what `python -m discovery` runs), one client process
opens N streams; the bench then makes 20 changes one by one and records the time
from just before the change is sent until the last of the N watchers has it (p50, p99), and the
server's RSS growth per open stream. Time is CLOCK_MONOTONIC, shared by all processes.

    python -m bench.watch_fanout            # full run (about a minute)
    python -m bench.watch_fanout --smoke    # tiny sizes, a few seconds
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence

import grpc
import uvloop

from bench._common import Child, ms, percentile, spawn
from discovery.config import Settings
from discovery.grpc_api import BURST_OPTIONS
from discovery.main import DiscoveryServer
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc

SERVICE = "bench"
STREAMS_PER_CHANNEL = 250
_BARE_WATCH = "/bench.Fanout/Watch"
_BARE_PUBLISH = "/bench.Fanout/Publish"


def _message(seq: int) -> bytes:
    """What the bare server fans out: a WatchResponse like the real one for the same change."""
    instance = pb.Instance(
        service_name=SERVICE,
        instance_id=f"i-{seq}",
        host="127.0.0.1",
        port=8000,
        status=pb.HEALTH_STATUS_HEALTHY,
        metadata={"version": "1.0.0"},
    )
    instance.registered_at.GetCurrentTime()
    event = pb.WatchEvent(type=pb.EVENT_TYPE_PUT, instance=instance, revision=seq + 1)
    return pb.WatchResponse(revision=seq + 1, events=[event], synced=True).SerializeToString()


# -- the bare server (a child process) --------------------------------------------------------


async def bare_server() -> None:
    """A minimal grpc.aio fan-out: a queue per stream, the same bytes put in each."""
    queues: set[asyncio.Queue[bytes]] = set()
    hello = pb.WatchResponse(reset=True, synced=True, revision=1).SerializeToString()

    async def watch(
        request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        queues.add(queue)
        try:
            await context.send_initial_metadata(())
            yield hello
            while True:
                yield await queue.get()
        finally:
            queues.discard(queue)

    async def publish(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        for queue in queues:
            queue.put_nowait(request)
        return b""

    handlers = {
        "Watch": grpc.unary_stream_rpc_method_handler(watch),
        "Publish": grpc.unary_unary_rpc_method_handler(publish),
    }
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0), *BURST_OPTIONS])
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Fanout", handlers),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"port {port}", flush=True)
    await server.wait_for_termination()


# -- the watchers (a child process) -----------------------------------------------------------


async def watchers(target: str, kind: str, streams: int) -> None:
    """Open `streams` watch streams; print `ready`, then `done SEQ LAST_ARRIVAL` per change."""
    options = [("grpc.use_local_subchannel_pool", 1)]  # one connection per channel
    channels = [
        grpc.aio.insecure_channel(target, options=options)
        for _ in range(math.ceil(streams / STREAMS_PER_CHANNEL))
    ]
    counts: dict[int, int] = defaultdict(int)
    started = 0
    all_started = asyncio.Event()

    def arrived(seq: int, now: float) -> None:
        counts[seq] += 1
        if counts[seq] == streams:
            print(f"done {seq} {now!r}", flush=True)

    async def follow(channel: grpc.aio.Channel) -> None:
        nonlocal started
        if kind == "bare":
            call = channel.unary_stream(
                _BARE_WATCH, response_deserializer=pb.WatchResponse.FromString
            )(b"")
        else:
            request = pb.WatchRequest(service_names=[SERVICE])
            call = pb_grpc.DiscoveryServiceStub(channel).Watch(request)
        first = True
        async for message in call:
            now = time.monotonic()
            if first:
                first = False
                started += 1
                if started == streams:
                    all_started.set()
            for event in message.events:
                if message.synced and not message.reset:
                    arrived(int(event.instance.instance_id.split("-")[1]), now)

    tasks = [asyncio.create_task(follow(channels[n % len(channels)])) for n in range(streams)]
    await all_started.wait()
    print("ready", flush=True)
    await asyncio.gather(*tasks)


# -- the driver -------------------------------------------------------------------------------


async def measure(kind: str, loop: str, streams: int, changes: int) -> dict[str, float]:
    server = await spawn(
        ["-m", "bench.watch_fanout", "--role", "server", "--kind", kind, "--loop", loop]
    )
    port = int((await server.line(30)).split()[1])
    return await _run(kind, server, port, streams, changes)


async def _run(kind: str, server: Child, port: int, streams: int, changes: int) -> dict[str, float]:
    target = f"127.0.0.1:{port}"
    clients: Child | None = None
    async with grpc.aio.insecure_channel(target) as channel:
        trigger = _trigger(kind, channel)
        try:
            await trigger(-1)  # warm the path (and the server's first-call costs)
            await asyncio.sleep(0.5)
            rss_before = server.rss()
            clients = await spawn(
                [
                    "-m",
                    "bench.watch_fanout",
                    "--role",
                    "watchers",
                    "--target",
                    target,
                    "--kind",
                    kind,
                    "--streams",
                    str(streams),
                ]
            )
            assert await clients.line(300) == "ready"
            await asyncio.sleep(1.0)
            rss_after = server.rss()
            latencies = []
            cpu = server.cpu_seconds()
            for seq in range(changes):
                sent = time.monotonic()
                await trigger(seq)
                done, number, last = (await clients.line(120)).split()
                assert (done, int(number)) == ("done", seq)
                latencies.append(float(last) - sent)
                await asyncio.sleep(0.05)
            cpu_per_change = (server.cpu_seconds() - cpu) / changes
        finally:
            if clients is not None:
                await clients.stop()
            await server.stop()
    return {
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "rss_per_stream": (rss_after - rss_before) / streams,
        "cpu_per_change": cpu_per_change,
    }


def _trigger(kind: str, channel: grpc.aio.Channel) -> Callable[[int], asyncio.Future[object]]:
    if kind == "bare":
        publish = channel.unary_unary(_BARE_PUBLISH)
        return lambda seq: publish(_message(seq))
    stub = pb_grpc.DiscoveryServiceStub(channel)

    def register(seq: int) -> asyncio.Future[object]:
        request = pb.RegisterRequest(
            service_name=SERVICE if seq >= 0 else "warmup",
            instance_id=f"i-{seq}" if seq >= 0 else "warm",
            host="127.0.0.1",
            port=8000,
            health_endpoint="",
            metadata={"version": "1.0.0"},
        )
        return stub.Register(request)

    return register


#: (server, event loop) pairs; the headline compares each server with bare on the same loop.
VARIANTS = [
    ("bare", "asyncio"),
    ("discovery", "asyncio"),
    ("bare", "uvloop"),
    ("discovery", "uvloop"),
]


async def main(
    sizes: Sequence[int], changes: int, variants: Sequence[tuple[str, str]] = VARIANTS
) -> None:
    print(
        f"Watch fan-out: {changes} changes per size; latency = change sent -> last watcher has it"
    )
    print(
        f"{'watchers':>9} {'server':>10} {'loop':>8} {'p50':>11} {'p99':>11} {'RSS/watcher':>13} "
        f"{'CPU/change':>11}"
    )
    for streams in sizes:
        results = {}
        for kind, loop in variants:
            results[kind, loop] = figures = await measure(kind, loop, streams, changes)
            print(
                f"{streams:>9} {kind:>10} {loop:>8} {ms(figures['p50'])} {ms(figures['p99'])} "
                f"{figures['rss_per_stream'] / 1024:>10.1f} KB {ms(figures['cpu_per_change'])}",
                flush=True,
            )
        for loop in sorted({loop for _, loop in variants}):
            ours, bare = results["discovery", loop], results["bare", loop]
            ratios = ", ".join(
                f"{name} {_ratio(ours[key], bare[key])}"
                for name, key in (("p50", "p50"), ("p99", "p99"), ("CPU/change", "cpu_per_change"))
            )
            print(f"{streams:>9} {'ratio':>10} {loop:>8}  {ratios} of bare", flush=True)


def _ratio(ours: float, bare: float) -> str:
    # CPU time is counted in clock ticks: tiny smoke runs can measure zero.
    return f"{ours / bare:.2f}x" if bare > 0 else "n/a"


async def discovery_server() -> None:
    """This project's server, as `python -m discovery` builds it, on free ports."""
    server = DiscoveryServer(Settings(host="127.0.0.1", rest_port=0, grpc_port=0))
    await server.start()
    print(f"port {server.grpc_port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


def _serve(kind: str, loop: str) -> None:
    main = bare_server() if kind == "bare" else discovery_server()
    factory = uvloop.new_event_loop if loop == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


def cli(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
    parser.add_argument("--sizes", default="1000,10000", help="watcher counts (comma-separated)")
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--role", choices=["driver", "server", "watchers"], default="driver")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="uvloop")
    parser.add_argument("--target")
    parser.add_argument("--kind")
    parser.add_argument("--streams", type=int)
    args = parser.parse_args(argv)
    if args.role == "server":
        _serve(args.kind, args.loop)
    elif args.role == "watchers":
        asyncio.run(watchers(args.target, args.kind, args.streams))
    elif args.smoke:
        asyncio.run(main([20, 100], 5, [v for v in VARIANTS if v[1] == "uvloop"]))
    else:
        asyncio.run(main([int(s) for s in args.sizes.split(",")], args.changes))


if __name__ == "__main__":
    cli(sys.argv[1:])
