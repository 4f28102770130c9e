"""gRPC load generators: closed-loop unary calls or KeepAlive streams, every result checked.

Why not h2load: it speaks HTTP/2 well enough to send gRPC calls, but it judges a call by its
HTTP status alone, and gRPC puts its verdict in the `grpc-status` trailer (an error is still HTTP
200), so it cannot tell a failed call from a good one. The figures use `bench/grpc_load.cjs`
instead (`node_load`): Node's built-in HTTP/2 client with the gRPC framing done by hand, which
checks every grpc-status and every KeepAlive ack and spends about half (unary) to a third
(KeepAlive) of what a grpc.aio client spends per call. `Channels` is the grpc.aio twin, used
where Node cannot be had, and for setting up (registrations). Both report the share of their
core they used; when that is full and the server's is not, the figure is marked as bound by the
load generator.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import grpc

from bench.common import CLIENT_CPU, ROOT, BenchError, Process, Usage
from discovery.v1 import discovery_pb2 as pb

Metadata = tuple[tuple[str, str], ...]
KEEPALIVE = "/discovery.v1.DiscoveryService/KeepAlive"
# One TCP connection per channel, even to the same target.
OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


@dataclass
class LoadResult:
    seconds: float
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def checked(self, what: str) -> float:
        """Successes per second, after making sure nothing failed."""
        if self.errors or not self.ok:
            raise BenchError(f"{what}: {self.ok} ok, failures {dict(self.errors)}")
        return self.ok / self.seconds


class Channels:
    """`count` connected channels to `target`."""

    def __init__(self, target: str, count: int) -> None:
        self.channels = [grpc.aio.insecure_channel(target, options=OPTIONS) for _ in range(count)]

    async def __aenter__(self) -> Channels:
        await asyncio.gather(*(channel.channel_ready() for channel in self.channels))
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for channel in self.channels:
            await channel.close(None)

    async def unary(
        self,
        method: str,
        requests: Sequence[bytes],
        in_flight: int,
        seconds: float,
        metadata: Metadata = (),
    ) -> LoadResult:
        """`in_flight` workers per channel, each calling `method` back to back with the next
        request; an answer counts when its status is OK."""
        calls = [channel.unary_unary(method, None, None) for channel in self.channels]
        result = LoadResult(seconds)
        deadline = time.monotonic() + seconds
        workers = len(calls) * in_flight

        async def worker(index: int) -> None:
            call, n = calls[index % len(calls)], index
            while time.monotonic() < deadline:
                try:
                    await call(requests[n % len(requests)], metadata=metadata)
                except grpc.aio.AioRpcError as exc:
                    result.errors[exc.code().name] += 1
                else:
                    result.ok += 1
                n += workers

        await asyncio.gather(*(worker(i) for i in range(workers)))
        return result

    async def each(
        self,
        method: str,
        requests: Sequence[bytes],
        workers: int,
        metadata: Metadata = (),
    ) -> LoadResult:
        """Every request once, by `workers` callers spread over the channels, each calling back
        to back; the time is from the first call to the last answer."""
        calls = [channel.unary_unary(method, None, None) for channel in self.channels]
        result = LoadResult(0)

        async def worker(index: int) -> None:
            call = calls[index % len(calls)]
            for request in requests[index::workers]:
                try:
                    await call(request, metadata=metadata)
                except grpc.aio.AioRpcError as exc:
                    result.errors[exc.code().name] += 1
                else:
                    result.ok += 1

        started = time.monotonic()
        await asyncio.gather(*(worker(i) for i in range(workers)))
        result.seconds = time.monotonic() - started
        return result

    async def keepalive(
        self,
        names: Sequence[tuple[str, str]],
        streams: int,
        in_flight: int,
        seconds: float,
        metadata: Metadata = (),
    ) -> LoadResult:
        """`streams` KeepAlive streams over the channels, each keeping its share of `names`
        alive with up to `in_flight` unacknowledged heartbeats; an ack counts when its code is
        0 and it holds the instance. Each stream detaches its instances at the end, so they stay
        as they are."""
        deadline = time.monotonic() + seconds
        shares = [names[k::streams] for k in range(streams)]
        results = await asyncio.gather(
            *(
                self._stream(k, shares[k], in_flight, deadline, metadata)
                for k in range(streams)
                if shares[k]
            )
        )
        total = LoadResult(seconds)
        for stream in results:
            total.ok += stream.ok
            total.errors.update(stream.errors)
        return total

    async def _stream(
        self,
        index: int,
        names: Sequence[tuple[str, str]],
        in_flight: int,
        deadline: float,
        metadata: Metadata,
    ) -> LoadResult:
        method = self.channels[index % len(self.channels)].stream_stream(
            KEEPALIVE,
            request_serializer=pb.KeepAliveRequest.SerializeToString,
            response_deserializer=pb.KeepAliveResponse.FromString,
        )
        beats = [
            pb.KeepAliveRequest(service_name=service, instance_id=instance)
            for service, instance in names
        ]
        call = method(None, metadata=metadata)
        slots = asyncio.Semaphore(in_flight)
        counted = LoadResult(0)

        async def read() -> None:
            async for ack in call:
                if ack.code != 0:
                    counted.errors[f"ack code {ack.code}"] += 1
                elif time.monotonic() < deadline:
                    if ack.HasField("instance"):
                        counted.ok += 1
                    else:
                        counted.errors["ack without instance"] += 1
                slots.release()

        reader = asyncio.create_task(read())
        try:
            n = 0
            while time.monotonic() < deadline:
                await slots.acquire()
                await call.write(beats[n % len(beats)])
                n += 1
            for service, instance in names:
                detach = pb.KeepAliveRequest(
                    service_name=service, instance_id=instance, detach=True
                )
                await call.write(detach)
            await call.done_writing()
            await reader
        except grpc.aio.AioRpcError as exc:
            counted.errors[exc.code().name] += 1
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        return counted


def node_load(
    target: str,
    mode: str,
    method: str,
    requests: Sequence[bytes],
    *,
    server: Process,
    seconds: float,
    connections: int,
    in_flight: int,
    streams: int = 0,
    authorization: str = "",
) -> tuple[LoadResult, Usage]:
    """The same load from `bench/grpc_load.cjs` (Node, its own HTTP/2 client) on core 1, and
    the CPU shares of the server and of the generator over its window."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as file:
        json.dump([request.hex() for request in requests], file)
    command = ["node", str(ROOT / "bench" / "grpc_load.cjs"), "--target", target]
    command += ["--mode", mode, "--method", method, "--requests", file.name]
    command += ["--seconds", str(seconds), "--connections", str(connections)]
    command += ["--in-flight", str(in_flight), "--streams", str(streams)]
    if authorization:
        command += ["--authorization", authorization]
    generator = Process(command, cpu=CLIENT_CPU)
    try:
        if (line := generator.line(60)) != "started":
            raise BenchError(f"grpc_load.cjs: {line} {generator.tail()}")
        server_before, started = server.cpu_seconds(), time.monotonic()
        answer = json.loads(generator.line(seconds + 60))
        used = Usage(time.monotonic() - started)
        used.server = (server.cpu_seconds() - server_before) / used.seconds
        used.client = answer["client_share"]
    finally:
        generator.stop()
        Path(file.name).unlink()
    return LoadResult(answer["seconds"], answer["ok"], Counter(answer["errors"])), used
