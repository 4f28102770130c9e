"""Watch fan-out: one change to N watchers, ours against a bare grpc.aio fan-out and etcd.

Each repetition starts a fresh server on core 0 and a watcher process on core 1
(`bench.watchers`, N streams), then makes changes one at a time: a Register of a new instance
in the watched service (ours and the bare server, which serializes each change once and puts the
same bytes on every stream's queue), or a put under the watched prefix (etcd, watched through
its own gRPC Watch, one watch per stream). The time of a change runs from just before it is
sent until the last of the N watchers has it (CLOCK_MONOTONIC, shared by the processes); the
figure is the p99 over the changes (with 20 changes, their worst). RSS per watcher is the
server's growth from before the watchers connect to its peak after they are all open and every
change reached them.

    python -m bench.watch_fanout [--smoke]
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field

import grpc

from bench.baselines import etcd as etcd_baseline
from bench.common import (
    CLIENT_CPU,
    GRPC_AUTH,
    ROOT,
    BenchError,
    Process,
    discovery_server,
    python_module,
)
from bench.results import Row, Sample, Target, percentile, skipped, standalone
from bench.tools import ToolMissing, ensure, node_or_python
from bench.watchers import marker, request_for
from discovery.v1 import discovery_pb2 as pb

FIGURES = {
    "watch_1k_vs_bare": (
        "one change to 1,000 watchers, time to the last (p99 of 20) vs bare grpc.aio fan-out",
        Target("ratio_max", 1.2),
    ),
    "watch_1k_vs_etcd": (
        "one change to 1,000 watchers, time to the last (p99 of 20) vs etcd watch",
        Target("ratio_max", 1.0),
    ),
    "watch_10k_held": (
        "10,000 open watchers held: server RSS per watcher",
        Target("max", 30, "KB"),
    ),
}
REGISTER = "/discovery.v1.DiscoveryService/Register"


@dataclass(frozen=True)
class Size:
    watchers: int
    changes: int
    many: int  # the "10,000 watchers" figure
    many_changes: int
    hold: float  # seconds the many watchers stay idle before a last change must reach them all
    repeat: int  # for the 1,000 (the worst of 20 changes is noisy: 5)
    many_repeat: int


FULL = Size(1000, 20, 10_000, 5, hold=11.0, repeat=5, many_repeat=3)
SMOKE = Size(20, 3, 50, 2, hold=0.5, repeat=1, many_repeat=1)


@dataclass
class Runs:
    """Per repetition: the p99 time to the last watcher, RSS per watcher, CPU per change."""

    p99: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    server_cpu: list[float] = field(default_factory=list)
    client_cpu: list[float] = field(default_factory=list)
    idle_cpu: list[float] = field(default_factory=list)  # server core share while held idle


Trigger = Callable[[int], Awaitable[object]]


@contextlib.contextmanager
def server(kind: str) -> Iterator[Process]:
    if kind == "discovery":
        with discovery_server() as process:
            yield process
    elif kind == "bare":
        with python_module("bench.baselines.bare_grpc", kinds=("gRPC",)) as process:
            yield process
    else:
        with etcd_baseline.etcd() as (process, port):
            process.ports["gRPC"] = port
            yield process


def trigger(kind: str, channel: grpc.aio.Channel) -> Trigger:
    """What makes change `seq` (seq < 0: a warm-up change nobody watches)."""
    if kind == "etcd":
        put = channel.unary_unary(etcd_baseline.PUT, None, None)

        def put_key(seq: int) -> Awaitable[object]:
            prefix = b"bench/" if seq >= 0 else b"warmup/"
            name = marker(max(seq, 0)).encode()
            return put(etcd_baseline.put(prefix + name, name))

        return put_key
    register = channel.unary_unary(REGISTER, None, None)

    def change(seq: int) -> Awaitable[object]:
        request = pb.RegisterRequest(
            service_name="bench" if seq >= 0 else "warmup",
            instance_id=marker(max(seq, 0)),
            host="10.0.0.5",
            port=8080,
            health_endpoint="",
            metadata={"version": "1.0.0"},
        )
        return register(request.SerializeToString(), metadata=GRPC_AUTH)

    return change


def watchers_process(kind: str, target: str, streams: int) -> Process:
    """The watcher process: Node (its own HTTP/2 client) when it can be had, else Python."""
    if node_or_python()[0] == "python":
        command = [sys.executable, "-m", "bench.watchers", "--target", target, "--kind", kind]
        return Process([*command, "--streams", str(streams)], cpu=CLIENT_CPU)
    method, request, bidi = request_for(kind)
    script = str(ROOT / "bench" / "watchers.cjs")
    command = ["node", script, "--target", target, "--method", method, "--request", request.hex()]
    command += ["--streams", str(streams), *(["--bidi"] if bidi else [])]
    return Process(command, cpu=CLIENT_CPU)


async def repetition(kind: str, watchers: int, changes: int, runs: Runs, hold: float = 0.0) -> None:
    with server(kind) as process:
        target = f"127.0.0.1:{process.ports['gRPC']}"
        async with grpc.aio.insecure_channel(target) as channel:
            change = trigger(kind, channel)
            await change(-1)  # first-call costs, before anything is measured
            await asyncio.sleep(0.3)
            before = process.rss()
            clients = watchers_process(kind, target, watchers)
            try:
                if (line := await clients.aline(600)) != "ready":
                    raise BenchError(f"{kind} watchers: {line}")
                await asyncio.sleep(1.0)
                peak = process.rss()
                latencies = []
                server_cpu, client_cpu = process.cpu_seconds(), clients.cpu_seconds()
                for seq in range(changes):
                    sent = time.monotonic()
                    await change(seq)
                    line = await clients.aline(120)
                    done, number, last = line.split()
                    if (done, int(number)) != ("done", seq):
                        raise BenchError(f"{kind} watchers, change {seq}: {line}")
                    latencies.append(float(last) - sent)
                    await asyncio.sleep(0.05)
                runs.server_cpu.append((process.cpu_seconds() - server_cpu) / changes)
                runs.client_cpu.append((clients.cpu_seconds() - client_cpu) / changes)
                peak = max(peak, process.rss())
                if hold:
                    await held(kind, process, clients, change, changes, hold, runs)
                    peak = max(peak, process.rss())
            finally:
                clients.stop()
    runs.p99.append(percentile(latencies, 99))
    runs.p50.append(percentile(latencies, 50))
    runs.rss.append((peak - before) / watchers / 1024)


async def held(
    kind: str, server: Process, clients: Process, change: Trigger, seq: int, hold: float, runs: Runs
) -> None:
    """Leave the streams idle for `hold` seconds (past the 10 s progress period), then one more
    change must still reach every one of them."""
    cpu, started = server.cpu_seconds(), time.monotonic()
    await asyncio.sleep(hold)
    runs.idle_cpu.append((server.cpu_seconds() - cpu) / (time.monotonic() - started))
    await change(seq)
    line = await clients.aline(120)
    if line.split()[:2] != ["done", str(seq)]:
        raise BenchError(f"{kind} watchers, after {hold:g} s idle: {line}")


def run(
    kinds: Sequence[str], watchers: int, changes: int, repeat: int, hold: float = 0.0
) -> dict[str, Runs]:
    """Repetitions interleaved: ours, bare, etcd, ours, bare, etcd, ..."""
    runs = {kind: Runs() for kind in kinds}
    for _ in range(repeat):
        for kind in kinds:
            asyncio.run(repetition(kind, watchers, changes, runs[kind], hold))
    return runs


def _cpu(name: str, runs: Runs, changes: int) -> tuple[str, bool]:
    ms = 1000
    p50, client = statistics.median(runs.p50), statistics.median(runs.client_cpu)
    note = (
        f"{name}: p50 {p50 * ms:.1f} ms, p99 {statistics.median(runs.p99) * ms:.1f} ms; per "
        f"change the server used {statistics.median(runs.server_cpu) * ms:.1f} ms of CPU, the "
        f"watcher process {client * ms:.1f} ms"
    )
    # CPU time comes in 10 ms clock ticks: too few changes cannot tell.
    bound = client > 0.8 * p50 and client * changes >= 0.05
    if bound:
        note += " -- LOAD GENERATOR BOUND (the watchers were busy for most of each change)"
    return note, bound


def _client() -> str:
    client, why = node_or_python()
    return "Node (bench/watchers.cjs)" if client == "node" else f"Python (no Node: {why})"


def fanout_rows(size: Size) -> list[Row]:
    kinds = ["discovery", "bare", "etcd"]
    etcd_missing = ""
    try:
        ensure("etcd")
    except ToolMissing as exc:
        etcd_missing, kinds = str(exc), kinds[:2]
    runs = run(kinds, size.watchers, size.changes, size.repeat)
    ours = Sample([v * 1000 for v in runs["discovery"].p99], "ms")
    note = (
        f"{size.watchers} watch streams (250 per connection) in one {_client()} process on core "
        f"1, {size.changes} changes per repetition; the watchers' own time per message counts "
        "in every server's figure alike"
    )
    rows = []
    for key, kind, name in (
        ("watch_1k_vs_bare", "bare", "bare grpc.aio"),
        ("watch_1k_vs_etcd", "etcd", "etcd"),
    ):
        title, target = FIGURES[key]
        if kind not in runs:
            rows.append(skipped(key, title, target, etcd_missing))
            continue
        base = Sample([v * 1000 for v in runs[kind].p99], "ms")
        row = Row(key, title, target, ours, base, name, notes=[note])
        for who, what in (("ours", "discovery"), (name, kind)):
            cpu_note, bound = _cpu(who, runs[what], size.changes)
            row.notes.append(cpu_note)
            row.load_bound = row.load_bound or bound
        rows.append(row)
    return rows


def held_row(size: Size) -> Row:
    runs = run(["discovery", "bare"], size.many, size.many_changes, size.many_repeat, size.hold)
    title, target = FIGURES["watch_10k_held"]
    row = Row(
        "watch_10k_held",
        title,
        target,
        Sample(runs["discovery"].rss, "KB"),
        Sample(runs["bare"].rss, "KB"),
        "bare grpc.aio (for reference)",
    )
    row.notes += [
        f"{size.many} streams opened and held by one {_client()} process; each of "
        f"{size.many_changes} changes reached every one of them, and one more after the streams "
        f"sat idle for {size.hold:g} s; server core while idle: ours "
        f"{statistics.median(runs['discovery'].idle_cpu):.0%}, bare "
        f"{statistics.median(runs['bare'].idle_cpu):.0%}",
        _cpu("ours", runs["discovery"], size.many_changes)[0],
        _cpu("bare grpc.aio", runs["bare"], size.many_changes)[0],
    ]
    return row


def measure(smoke: bool) -> list[Row]:
    size = SMOKE if smoke else FULL
    return [*fanout_rows(size), held_row(size)]


def cli(argv: Sequence[str] | None = None) -> None:
    standalone(measure, __doc__, argv)


if __name__ == "__main__":
    cli()
