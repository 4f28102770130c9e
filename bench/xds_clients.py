"""xDS or Watch followers in a child process: N streams on one service, each change timed at
the last stream to see it.

    python -m bench.xds_clients --target HOST:PORT --kind xds|watch --streams N

`xds`: each stream is an ADS stream subscribed to the ClusterLoadAssignment of `bench`, and
acknowledges every response as a gRPC client does. `watch`: each stream is a healthy-only Watch
of `bench`. Either way a stream's state is whether instance `flip` is in its healthy set. Prints
`ready` once every stream has its first state, then `done STATE TIME` each time the last stream
reaches a new common state (STATE 1: `flip` present, 0: absent; TIME on the shared
CLOCK_MONOTONIC). A stream that ends prints `lost ...` and the process exits with status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2 as xds_pb

from discovery.v1 import discovery_pb2 as pb

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
WATCH = "/discovery.v1.DiscoveryService/Watch"
ENDPOINTS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SERVICE = "bench"
FLIP = "flip"
STREAMS_PER_CHANNEL = 25


class Tally:
    """How many streams hold each state; reports when all agree on a new one."""

    def __init__(self, streams: int) -> None:
        self.streams = streams
        self.count = {True: 0, False: 0}
        self.ready = asyncio.Event()

    def move(self, before: bool | None, after: bool) -> None:
        if before is after:
            return
        now = time.monotonic()
        if before is not None:
            self.count[before] -= 1
        self.count[after] += 1
        if self.count[after] == self.streams:
            if self.ready.is_set():
                print(f"done {int(after)} {now!r}", flush=True)
            else:
                self.ready.set()


async def follow_xds(channel: grpc.aio.Channel, tally: Tally) -> None:
    method: Any = channel.stream_stream(ADS, request_serializer=None, response_deserializer=None)
    call = method()
    request = xds_pb.DiscoveryRequest(type_url=ENDPOINTS, resource_names=[SERVICE])
    request.node.id = f"bench-{os.getpid()}"
    await call.write(request.SerializeToString())
    state: bool | None = None
    while (message := await call.read()) is not grpc.aio.EOF:  # type: ignore[attr-defined]
        response = xds_pb.DiscoveryResponse.FromString(message)
        new = FLIP.encode() in message
        tally.move(state, new)
        state = new
        ack = xds_pb.DiscoveryRequest(
            type_url=ENDPOINTS,
            resource_names=[SERVICE],
            version_info=response.version_info,
            response_nonce=response.nonce,
        )
        await call.write(ack.SerializeToString())


async def follow_watch(channel: grpc.aio.Channel, tally: Tally) -> None:
    request = pb.WatchRequest(service_names=[SERVICE], healthy_only=True)
    method: Any = channel.unary_stream(WATCH, request_serializer=None, response_deserializer=None)
    call = method(request.SerializeToString())
    state: bool | None = None
    present: set[str] = set()
    async for message in call:
        response = pb.WatchResponse.FromString(message)
        if response.reset:
            present.clear()
        for event in response.events:
            if event.type == pb.EVENT_TYPE_PUT:
                present.add(event.instance.instance_id)
            else:
                present.discard(event.instance.instance_id)
        if response.synced:
            new = FLIP in present
            tally.move(state, new)
            state = new


async def run(target: str, kind: str, streams: int) -> None:
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [
        grpc.aio.insecure_channel(target, options=options)
        for _ in range(math.ceil(streams / STREAMS_PER_CHANNEL))
    ]
    tally = Tally(streams)
    follow = follow_xds if kind == "xds" else follow_watch

    async def guarded(channel: grpc.aio.Channel) -> None:
        try:
            await follow(channel, tally)
            reason = "the stream ended"
        except grpc.aio.AioRpcError as exc:
            reason = f"{exc.code().name}: {exc.details()}"
        print(f"lost {reason}", flush=True)
        os._exit(1)

    tasks = [asyncio.create_task(guarded(channels[n % len(channels)])) for n in range(streams)]
    await tally.ready.wait()
    print("ready", flush=True)
    await asyncio.gather(*tasks)


def cli(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", required=True)
    parser.add_argument("--kind", choices=["xds", "watch"], required=True)
    parser.add_argument("--streams", type=int, required=True)
    args = parser.parse_args(argv)
    asyncio.run(run(args.target, args.kind, args.streams))


if __name__ == "__main__":
    cli()
