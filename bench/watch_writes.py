"""Writes under watchers: registrations/s from 20 gRPC clients with 0, 200 and 2,000 open Watch
streams on the registered service, beside etcd's put rate with as many watchers on its prefix.

Each repetition starts a fresh server on core 0 and, when there are watchers, a watcher process
on core 1 (`bench/watchers.cjs --tally`, reading every stream promptly and counting the events
of each message). The load (`bench/grpc_load.cjs`, core 1): 20 HTTP/2 connections with one call
in flight each, every call a Register of a new instance (a change every watcher must get), each
grpc-status checked. etcd gets the same load as puts of new keys under the watched prefix. After
the load window the watchers are told how many changes were acknowledged and answer once every
stream had them all: the lag from the last answer to the last watcher, and the events per
message they saw.

    python -m bench.watch_writes [--smoke]
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from bench.baselines import etcd as etcd_baseline
from bench.common import CLIENT_CPU, GRPC_AUTH, ROOT, BenchError, Process, discovery_server
from bench.grpc_load import node_load
from bench.results import Row, Sample, Target, standalone
from bench.tools import ToolMissing, ensure, node_or_python
from bench.watchers import marker, request_for
from discovery.v1 import discovery_pb2 as pb

FIGURES = {
    "watch_writes_200": (
        "registrations/s from 20 gRPC clients with 200 watchers vs with none",
        Target("ratio_min", 0.5),
    ),
    "watch_writes_2000": (
        "registrations/s from 20 gRPC clients with 2,000 watchers vs with none",
        Target("ratio_min", 0.25),
    ),
    "watch_writes_lag": (
        "last registration to the last of 2,000 watchers (lag under that load)",
        Target("max", 1.0, "s"),
    ),
}
REGISTER = "/discovery.v1.DiscoveryService/Register"
CLIENTS = 20


@dataclass(frozen=True)
class Size:
    watchers: tuple[int, ...]
    seconds: float
    repeat: int
    changes: int  # distinct requests prepared (more than a window can use)


FULL = Size((0, 200, 2000), 5.0, 3, 60_000)
SMOKE = Size((0, 5, 20), 0.5, 1, 5_000)


@dataclass
class Run:
    """One load window: its rate, and what the watchers saw."""

    rate: float
    lag: float = 0.0
    per_message: float = 0.0
    server_share: float = 0.0
    client_share: float = 0.0  # the load generator's (core 1 also runs the watchers)


@dataclass
class Runs:
    by_watchers: dict[int, list[Run]] = field(default_factory=dict)

    def add(self, watchers: int, run: Run) -> None:
        self.by_watchers.setdefault(watchers, []).append(run)

    def rates(self, watchers: int) -> list[float]:
        return [run.rate for run in self.by_watchers[watchers]]

    def median(self, watchers: int, what: str) -> float:
        return statistics.median(float(getattr(run, what)) for run in self.by_watchers[watchers])


def requests(kind: str, count: int) -> list[bytes]:
    """Distinct changes: new instances (ours) or new keys (etcd), each with its marker."""
    if kind == "etcd":
        return [etcd_baseline.put(b"bench/" + marker(i).encode(), b"v") for i in range(count)]
    return [
        pb.RegisterRequest(
            service_name="bench",
            instance_id=marker(i),
            host="10.0.0.5",
            port=8080,
            health_endpoint="",
            metadata={"version": "1.0.0"},
        ).SerializeToString()
        for i in range(count)
    ]


@contextlib.contextmanager
def server(kind: str) -> Iterator[Process]:
    if kind == "discovery":
        # One service takes every registration of a window: past the default 10,000 per
        # service a fast window would be refused (RESOURCE_EXHAUSTED).
        with discovery_server(MAX_INSTANCES_PER_SERVICE=str(FULL.changes)) as process:
            yield process
    else:
        with etcd_baseline.etcd() as (process, port):
            process.ports["gRPC"] = port
            yield process


def watchers_process(kind: str, target: str, streams: int) -> Process:
    method, request, bidi = request_for(kind)
    field = "11" if kind == "etcd" else "2"  # the events field of each WatchResponse
    command = ["node", str(ROOT / "bench" / "watchers.cjs"), "--target", target]
    command += ["--tally", field]
    command += ["--method", method, "--request", request.hex(), "--streams", str(streams)]
    return Process([*command, *(["--bidi"] if bidi else [])], cpu=CLIENT_CPU)


def repetition(kind: str, watchers: int, size: Size, bodies: list[bytes]) -> Run:
    with server(kind) as process:
        target = f"127.0.0.1:{process.ports['gRPC']}"
        clients = watchers_process(kind, target, watchers) if watchers else None
        try:
            if clients is not None and (line := clients.line(600)) != "ready":
                raise BenchError(f"{kind} watchers: {line}")
            method = etcd_baseline.PUT if kind == "etcd" else REGISTER
            auth = "" if kind == "etcd" else dict(GRPC_AUTH)["authorization"]
            result, used = node_load(
                target, "unary", method, bodies, server=process, seconds=size.seconds,
                connections=CLIENTS, in_flight=1, authorization=auth,
            )  # fmt: skip
            answered = time.monotonic()
            rate = result.checked(f"{kind} writes")
            run = Run(rate, server_share=used.server, client_share=used.client)
            if result.ok >= len(bodies):
                raise BenchError(f"{kind}: the {len(bodies)} distinct changes ran out")
            if clients is not None:
                run.lag, run.per_message = settle(kind, clients, result.ok, answered)
        finally:
            if clients is not None:
                clients.stop()
    return run


def settle(kind: str, clients: Process, changes: int, answered: float) -> tuple[float, float]:
    """Wait until every stream had `changes` events: (lag, events per message)."""
    assert clients.proc.stdin is not None
    clients.proc.stdin.write(f"expect {changes}\n")
    clients.proc.stdin.flush()
    line = clients.line(120).split()
    if not line or line[0] != "all":
        raise BenchError(f"{kind} watchers: {' '.join(line)}")
    at, messages, events = float(line[1]), int(line[2]), int(line[3])
    return max(0.0, at - answered), events / max(messages, 1)


def run(kinds: Sequence[str], size: Size) -> dict[str, Runs]:
    """Repetitions interleaved: ours and etcd in turn, for each number of watchers."""
    bodies = {kind: requests(kind, size.changes) for kind in kinds}
    runs = {kind: Runs() for kind in kinds}
    for _ in range(size.repeat):
        for watchers in size.watchers:
            for kind in kinds:
                runs[kind].add(watchers, repetition(kind, watchers, size, bodies[kind]))
    return runs


def _ratio_row(key: str, watchers: int, runs: dict[str, Runs], size: Size) -> Row:
    title, target = FIGURES[key]
    ours = runs["discovery"]
    row = Row(
        key,
        title,
        target,
        Sample(ours.rates(watchers), "/s"),
        Sample(ours.rates(0), "/s"),
        "ours with no watcher",
    )
    row.notes.append(
        f"{CLIENTS} connections with one Register in flight each, {size.seconds:g} s windows; "
        f"{watchers} watch streams in one Node process (bench/watchers.cjs) on core 1; "
        f"{ours.median(watchers, 'per_message'):.1f} events per WatchResponse, last write to "
        f"the last watcher {ours.median(watchers, 'lag') * 1000:.0f} ms; server core "
        f"{ours.median(watchers, 'server_share'):.0%} (with no watcher "
        f"{ours.median(0, 'server_share'):.0%}), load generator "
        f"{ours.median(watchers, 'client_share'):.0%} of core 1, which the watchers share"
    )
    if "etcd" in runs:
        etcd = runs["etcd"]
        alone, watched = statistics.median(etcd.rates(0)), statistics.median(etcd.rates(watchers))
        row.notes.append(
            f"etcd, same load as puts: {alone:,.0f}/s with no watcher, {watched:,.0f}/s with "
            f"{watchers} watchers on the prefix ({watched / alone:.3f}x); "
            f"{etcd.median(watchers, 'per_message'):.1f} events per message, lag "
            f"{etcd.median(watchers, 'lag') * 1000:.0f} ms"
        )
    return row


def measure(smoke: bool) -> list[Row]:
    size = SMOKE if smoke else FULL
    if node_or_python()[0] != "node":
        raise ToolMissing("these figures need Node (bench/watchers.cjs, bench/grpc_load.cjs)")
    kinds = ["discovery", "etcd"]
    etcd_missing = ""
    try:
        ensure("etcd")
    except ToolMissing as exc:
        etcd_missing, kinds = str(exc), ["discovery"]
    runs = run(kinds, size)
    few, many = size.watchers[1], size.watchers[2]
    rows = [
        _ratio_row("watch_writes_200", few, runs, size),
        _ratio_row("watch_writes_2000", many, runs, size),
    ]
    title, target = FIGURES["watch_writes_lag"]
    lags = [run.lag for run in runs["discovery"].by_watchers[many]]
    lag = Row("watch_writes_lag", title, target, Sample(lags, "s"))
    lag.notes.append(f"{many} watchers, the load of the row above")
    if etcd_missing:
        lag.notes.append(f"etcd not measured: {etcd_missing}")
    return [*rows, lag]


def cli(argv: Sequence[str] | None = None) -> None:
    standalone(measure, __doc__, argv)


if __name__ == "__main__":
    cli()
