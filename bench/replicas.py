"""Replicas on etcd: throughput through 1, 2 and 3 replicas, cross-replica watch latency against
etcd's own, and a Watch failover seen by the SDK.

Every repetition uses one etcd (Debian's etcd-server, `bench.baselines.etcd`) and fresh replicas
under a fresh prefix. On this 2-core machine replica i runs on core i % 2 (the load generator
shares core 1), so the 2- and 3-replica rows say how much a second core buys, not more.

- Throughput: gRPC `Register` (re-registering the same instances: each one is an etcd
  transaction), `Heartbeat` (absorbed in memory, written through once per flush interval) and
  `GetService` with `healthy_only` (a read of one of 10 services of 100 instances, served from
  the replica's own read model), 16 calls in flight on each of 4 channels per replica, every
  status checked.
- Watch latency: a watcher on replica B, a `Register` of a new instance sent to replica A; the
  time from sending it until B's watcher has it, p99 of 100 (one write at a time, its answer
  awaited, then its arrival). Baseline: etcd's own, measured the same way in the same run: a
  put from one client, a watch on the same etcd from another (two gRPC channels, as our writer
  and watcher), each arrival stamped by the watch client's reading task. Each side makes one
  untimed write first, so that no sample pays for connecting.
- Failover: an SDK `ServiceWatcher` on a channel listing replicas A and B (connected to A);
  A is SIGKILLed and a change is registered on B at once: the time until the watcher has it,
  with no reset snapshot and nothing missed.

    python -m bench.replicas [--smoke]
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass

import grpc
from aetcd import rpc

from bench.baselines.etcd import etcd
from bench.common import (
    CLIENT_CPU,
    GRPC_AUTH,
    SERVER_CPU,
    BenchError,
    Process,
    python_module,
    server_env,
)
from bench.grpc_load import Channels
from bench.results import Row, Sample, Target, percentile, standalone
from discovery.client import ServiceWatcher
from discovery.client._common import Backoff
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc

FIGURES = {
    "replicas_register_1": ("gRPC Register/s through 1 replica on etcd", Target("none", 0)),
    "replicas_register_2": ("gRPC Register/s through 2 replicas vs 1", Target("none", 0)),
    "replicas_register_3": ("gRPC Register/s through 3 replicas vs 1", Target("none", 0)),
    "replicas_heartbeat_1": ("gRPC Heartbeat/s through 1 replica on etcd", Target("none", 0)),
    "replicas_heartbeat_2": (
        "gRPC Heartbeat/s through 2 replicas vs 1",
        Target("ratio_min", 1.0),
    ),
    "replicas_heartbeat_3": ("gRPC Heartbeat/s through 3 replicas vs 1", Target("none", 0)),
    "replicas_read_1": ("gRPC GetService/s through 1 replica on etcd", Target("none", 0)),
    "replicas_read_2": ("gRPC GetService/s through 2 replicas vs 1", Target("ratio_min", 1.0)),
    "replicas_read_3": ("gRPC GetService/s through 3 replicas vs 1", Target("none", 0)),
    "replicas_watch_p99": (
        "write on replica A to a watcher on replica B (p99 of 100) vs etcd's own watch",
        Target("ratio_max", 1.5),
    ),
    "replicas_failover": (
        "SDK Watch: replica SIGKILLed to the next change seen through another replica",
        Target("none", 0),
    ),
}
REGISTER = "/discovery.v1.DiscoveryService/Register"
_EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]  # grpc-stubs does not declare it
HEARTBEAT = "/discovery.v1.DiscoveryService/Heartbeat"
GET_SERVICE = "/discovery.v1.DiscoveryService/GetService"
#: The services the instances are spread over (reads ask for one of them).
SERVICES = 10


@dataclass(frozen=True)
class Size:
    instances: int
    seconds: float
    samples: int
    repeat: int


FULL = Size(instances=1000, seconds=5.0, samples=100, repeat=3)
SMOKE = Size(instances=50, seconds=0.5, samples=10, repeat=1)


@contextlib.contextmanager
def replicas(port: int, count: int) -> Iterator[list[Process]]:
    """`count` replicas on the etcd at `port`, under a fresh prefix, replica i on core i % 2."""
    store = f"etcd://127.0.0.1:{port}/bench-{uuid.uuid4().hex[:8]}"
    env = server_env(SERVICE_DISCOVERY_STORE=store, SERVICE_DISCOVERY_REPLICA_TTL_SECONDS="2")
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(
                python_module("discovery", kinds=("REST", "gRPC"), env=env, cpu=i % 2)
            )
            for i in range(count)
        ]


def grpc_target(process: Process) -> str:
    return f"127.0.0.1:{process.ports['gRPC']}"


def bodies(size: Size) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """Register and Heartbeat requests for each instance, and a GetService per service."""
    registers, beats = [], []
    for n in range(size.instances):
        name, instance = f"svc-{n % SERVICES}", f"i-{n}"
        registers.append(
            pb.RegisterRequest(
                service_name=name,
                instance_id=instance,
                host="10.0.0.5",
                port=8000,
                health_endpoint="",
            ).SerializeToString()
        )
        beats.append(
            pb.HeartbeatRequest(service_name=name, instance_id=instance).SerializeToString()
        )
    reads = [
        pb.GetServiceRequest(service_name=f"svc-{n}", healthy_only=True).SerializeToString()
        for n in range(SERVICES)
    ]
    return registers, beats, reads


async def rates(processes: list[Process], size: Size) -> list[float]:
    """Registrations/s, heartbeats/s and reads/s through every replica at once."""
    registers, beats, reads = bodies(size)
    async with contextlib.AsyncExitStack() as stack:
        groups = [await stack.enter_async_context(Channels(grpc_target(p), 4)) for p in processes]
        (await groups[0].each(REGISTER, registers, 64, GRPC_AUTH)).checked("registrations")
        # Every replica must have them before heartbeats go to it.
        await asyncio.sleep(0.5)
        results = []
        share = len(groups)
        loads = (
            # Each replica gets its own share of the instances, as behind a balancer that keeps
            # a client on one replica (the same instance written through three replicas at
            # once would only measure compare-and-retry).
            (REGISTER, [registers[i::share] for i in range(share)]),
            (HEARTBEAT, [beats[i::share] for i in range(share)]),
            # Any replica answers any read.
            (GET_SERVICE, [reads] * share),
        )
        for method, shares in loads:
            runs = await asyncio.gather(
                *(
                    g.unary(method, mine, 16, size.seconds, GRPC_AUTH)
                    for g, mine in zip(groups, shares, strict=True)
                )
            )
            results.append(sum(r.checked(method) for r in runs))
    return results


class Arrivals:
    """When each awaited name first reached a watch client (stamped by its reading task)."""

    def __init__(self) -> None:
        self._waiting: dict[object, asyncio.Future[float]] = {}

    def expect(self, name: object) -> asyncio.Future[float]:
        future = self._waiting[name] = asyncio.get_running_loop().create_future()
        return future

    def seen(self, name: object, now: float) -> None:
        future = self._waiting.pop(name, None)
        if future is not None and not future.done():
            future.set_result(now)


async def _timed(
    samples: int, write: Callable[[int], Awaitable[object]], arrivals: Arrivals
) -> list[float]:
    """Seconds from sending write `n` until the watch client has it, for each `n`: the write
    awaited first (its answer checked), then its arrival. One untimed write first, so that no
    sample pays for connecting."""
    took = []
    for n in range(-1, samples):
        arrived = arrivals.expect(n)
        sent = time.perf_counter()
        await write(n)
        try:
            arrival = await asyncio.wait_for(arrived, 10)
        except TimeoutError:
            raise BenchError(f"the watcher never saw write {n}") from None
        if n >= 0:
            took.append(arrival - sent)
    return took


async def watch_latency(a: Process, b: Process, samples: int) -> list[float]:
    """Seconds from sending a Register to A until a watcher on B has it."""
    arrivals = Arrivals()
    service = f"lat-{uuid.uuid4().hex[:8]}"
    async with (
        grpc.aio.insecure_channel(grpc_target(a)) as writer,
        grpc.aio.insecure_channel(grpc_target(b)) as reader,
    ):
        call = pb_grpc.DiscoveryServiceStub(reader).Watch(
            pb.WatchRequest(service_names=[service], healthy_only=False)
        )
        synced = asyncio.Event()

        async def read() -> None:
            async for message in call:
                now = time.perf_counter()
                for event in message.events:
                    arrivals.seen(int(event.instance.instance_id.partition("-")[2]), now)
                if message.synced:
                    synced.set()

        reading = asyncio.create_task(read())
        await asyncio.wait_for(synced.wait(), 10)
        stub = pb_grpc.DiscoveryServiceStub(writer)

        async def register(n: int) -> None:
            request = pb.RegisterRequest(
                service_name=service,
                instance_id=f"i-{n}",
                host="10.0.0.5",
                port=8000,
                health_endpoint="",
            )
            await stub.Register(request, metadata=GRPC_AUTH, timeout=10)

        try:
            return await _timed(samples, register, arrivals)
        finally:
            call.cancel()
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await reading


async def etcd_latency(port: int, samples: int) -> list[float]:
    """Seconds from sending a put to etcd until etcd's own watch has it: as `watch_latency`,
    the put and the watch from two clients (channels), the arrival stamped by a reading task."""
    arrivals = Arrivals()
    prefix = f"/lat-{uuid.uuid4().hex[:8]}/".encode()
    target = f"127.0.0.1:{port}"
    async with (
        grpc.aio.insecure_channel(target) as writer,
        grpc.aio.insecure_channel(target) as reader,
    ):
        kv = rpc.KVStub(writer)
        watch = rpc.WatchStub(reader).Watch()
        end = prefix[:-1] + bytes([prefix[-1] + 1])
        create = rpc.WatchCreateRequest(key=prefix, range_end=end)
        await watch.write(rpc.WatchRequest(create_request=create))
        await watch.read()  # created

        async def read() -> None:
            while (reply := await watch.read()) is not _EOF:
                now = time.perf_counter()
                for event in reply.events:
                    arrivals.seen(int(event.kv.key[len(prefix) :]), now)

        async def put(n: int) -> None:
            key = prefix + str(n).encode()
            await kv.Put(rpc.PutRequest(key=key, value=b"x" * 200), timeout=10)

        reading = asyncio.create_task(read())
        try:
            return await _timed(samples, put, arrivals)
        finally:
            watch.cancel()
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await reading


async def failover(a: Process, b: Process) -> float:
    """Seconds from SIGKILL of A until the SDK watcher (on A) has a change made on B."""
    target = f"ipv4:{grpc_target(a)},{grpc_target(b)}"
    async with grpc.aio.insecure_channel(grpc_target(b)) as writer:
        stub = pb_grpc.DiscoveryServiceStub(writer)

        async def register(name: str) -> None:
            request = pb.RegisterRequest(
                service_name="fo",
                instance_id=name,
                host="10.0.0.5",
                port=8000,
                health_endpoint="",
            )
            await stub.Register(request, metadata=GRPC_AUTH, timeout=10)

        channel = grpc.aio.insecure_channel(target)
        watcher = ServiceWatcher(
            channel=channel, services=["fo"], backoff=Backoff(initial=0.02, maximum=0.5)
        )
        async with watcher:
            for n in range(5):
                await register(f"fo-{n}")
            await _until(lambda: len(watcher.instances("fo")) == 5)
            resets = watcher.resets  # the first snapshot counts as one
            a.proc.kill()
            killed = time.perf_counter()
            await register("fo-after")
            await _until(lambda: len(watcher.instances("fo")) == 6)
            took = time.perf_counter() - killed
            if watcher.resets != resets:
                raise BenchError("the resumed watch got a reset snapshot")
            if watcher.reconnects < 1:
                raise BenchError("the watcher never reconnected")
        await channel.close(None)
    return took


async def _until(check: object, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise BenchError("timed out")
        await asyncio.sleep(0.001)


def measure(smoke: bool) -> list[Row]:
    size = SMOKE if smoke else FULL
    kinds = ("register", "heartbeat", "read")
    figures: dict[str, dict[int, list[float]]] = {k: {1: [], 2: [], 3: []} for k in kinds}
    ours: list[float] = []
    theirs: list[float] = []
    medians: list[float] = []  # p50s: etcd's, ours, etcd's, ours, ...
    failovers: list[float] = []
    with etcd() as (_, port):
        for _ in range(size.repeat):
            for count in (1, 2, 3):
                with replicas(port, count) as processes:
                    measured = asyncio.run(rates(processes, size))
                for kind, rate in zip(kinds, measured, strict=True):
                    figures[kind][count].append(rate)
            etcd_took = asyncio.run(etcd_latency(port, size.samples))
            with replicas(port, 2) as (a, b):
                our_took = asyncio.run(watch_latency(a, b, size.samples))
            for into, took in ((theirs, etcd_took), (ours, our_took)):
                into.append(percentile(took, 99) * 1000)
                medians.append(percentile(took, 50) * 1000)
            with replicas(port, 2) as (a, b):
                failovers.append(asyncio.run(failover(a, b)) * 1000)
    rows = []
    for kind in kinds:
        for count in (1, 2, 3):
            key = f"replicas_{kind}_{count}"
            title, target = FIGURES[key]
            row = Row(key, title, target, Sample(figures[kind][count], "req/s"))
            if count > 1:
                one = Sample(figures[kind][1], "req/s")
                row.baseline, row.baseline_name = one, "1 replica"
            row.notes.append(
                f"replica i on core i % 2, load generator (Python grpc.aio, core {CLIENT_CPU}) "
                f"shares core 1; {size.instances} heartbeat-only instances"
            )
            rows.append(row)
    title, target = FIGURES["replicas_watch_p99"]
    watch = Row("replicas_watch_p99", title, target, Sample(ours, "ms"))
    watch.baseline, watch.baseline_name = Sample(theirs, "ms"), "etcd put -> etcd watch"
    watch.notes.append(
        f"p99 of {size.samples} per repetition, after one untimed write; etcd on core "
        f"{SERVER_CPU}; p50 {statistics.median(medians[1::2]):.2f} ms vs etcd's "
        f"{statistics.median(medians[0::2]):.2f} ms"
    )
    rows.append(watch)
    title, target = FIGURES["replicas_failover"]
    over = Row("replicas_failover", title, target, Sample(failovers, "ms"))
    over.notes.append(
        f"SDK ServiceWatcher, backoff from 20 ms; mean {statistics.mean(failovers):.0f} ms; "
        "no reset snapshot, nothing missed"
    )
    rows.append(over)
    return rows


def cli(argv: Sequence[str] | None = None) -> None:
    standalone(measure, __doc__, argv)


if __name__ == "__main__":
    cli()
