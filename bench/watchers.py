"""Watchers in a child process: N watch streams on one server, each change timed at the last.

The Python twin of `bench/watchers.cjs` (Node, several times cheaper per message), used when
Node cannot be had.

    python -m bench.watchers --target HOST:PORT --kind discovery|bare|etcd --streams N

Opens N streams (250 per channel, one connection each) watching service (or key prefix)
`bench`, prints `ready` once every stream has had its first message (the snapshot, or etcd's
`created`), then, for each change, `done SEQ TIME` when the last stream has it (TIME on the
shared CLOCK_MONOTONIC). A change carries the marker `chg-NNNNNN` (the instance id, or etcd's
value); answers are taken as bytes and only searched for it, so the client spends as little as
it can per message. A stream that ends prints `lost ...` and the process exits with status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import time
from collections import Counter
from collections.abc import AsyncIterable, Sequence

import grpc

from bench.baselines.etcd import WATCH as ETCD_WATCH
from bench.baselines.etcd import watch_prefix
from discovery.v1 import discovery_pb2 as pb

WATCH = "/discovery.v1.DiscoveryService/Watch"
STREAMS_PER_CHANNEL = 250
MARKER = re.compile(rb"chg-(\d{6})")


def marker(seq: int) -> str:
    return f"chg-{seq:06d}"


def request_for(kind: str) -> tuple[str, bytes, bool]:
    """(method, request bytes, whether the call is bidirectional) of a watch of `kind`."""
    if kind == "etcd":
        return ETCD_WATCH, watch_prefix(b"bench/"), True
    return WATCH, pb.WatchRequest(service_names=["bench"]).SerializeToString(), False


def _stream(channel: grpc.aio.Channel, kind: str) -> AsyncIterable[bytes]:
    method, request, bidi = request_for(kind)
    if bidi:
        return channel.stream_stream(method, None, None)(iter([request]))
    return channel.unary_stream(method, None, None)(request)


async def watch(target: str, kind: str, streams: int) -> None:
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [
        grpc.aio.insecure_channel(target, options=options)
        for _ in range(math.ceil(streams / STREAMS_PER_CHANNEL))
    ]
    counts: Counter[int] = Counter()
    started = 0
    all_started = asyncio.Event()

    async def follow(channel: grpc.aio.Channel) -> None:
        nonlocal started
        last = -1
        first = True
        async for message in _stream(channel, kind):
            now = time.monotonic()
            if first:
                first = False
                started += 1
                if started == streams:
                    all_started.set()
            seqs = [int(found) for found in MARKER.findall(message)]
            if seqs and max(seqs) > last:
                last = max(seqs)
                counts[last] += 1
                if counts[last] == streams:
                    print(f"done {last} {now!r}", flush=True)

    async def guarded(channel: grpc.aio.Channel) -> None:
        try:
            await follow(channel)
            reason = "the stream ended"
        except grpc.aio.AioRpcError as exc:
            reason = f"{exc.code().name}: {exc.details()}"
        print(f"lost {reason}", flush=True)
        os._exit(1)

    tasks = [asyncio.create_task(guarded(channels[n % len(channels)])) for n in range(streams)]
    await all_started.wait()
    print("ready", flush=True)
    await asyncio.gather(*tasks)


def cli(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", required=True)
    parser.add_argument("--kind", choices=["discovery", "bare", "etcd"], required=True)
    parser.add_argument("--streams", type=int, required=True)
    args = parser.parse_args(argv)
    asyncio.run(watch(args.target, args.kind, args.streams))


if __name__ == "__main__":
    cli()
