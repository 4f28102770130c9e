"""The SQLite store against the memory store, and the SQLite store at scale.

- REST `POST /heartbeat`, `GET /services/{name}/healthy` and `POST /register` req/s (wrk, as
  in `bench.rest_api`) and gRPC unary `Register` req/s (as in `bench.grpc_heartbeat`) on a
  server keeping its state in SQLite against the same server on `memory`. Both servers run at
  once on core 0 and are measured in turn, repetition by repetition. Registrations re-register
  the same instances at the same address: each is still a durable write (an upsert committed
  before the answer).
- Start-up on a store holding 100,000 instances (100 services, 3 metadata entries each),
  written beforehand: from the spawn to the first answer on both ports (as in `bench.startup`),
  and the RSS then above that of a start on an empty store.
- 10,000 registrations from 200 concurrent gRPC clients on SQLite (as in
  `bench.register_burst`).

Each SQLite server gets a fresh file in a temporary folder.

    python -m bench.store [--smoke]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import grpc_heartbeat, register_burst, rest_api, startup
from bench.common import REST_AUTH, Process, discovery_server
from bench.grpc_load import Channels
from bench.rest_api import Subject, measure_all, register_many
from bench.results import Row, Sample, Target, standalone
from bench.tools import ensure, script
from discovery.core.store.sqlite_file import UPSERT, StoreFile

FIGURES = {
    "store_rest_register": (
        "REST POST /register req/s: SQLite store vs memory",
        Target("ratio_min", 0.8),
    ),
    "store_grpc_register": (
        "gRPC unary Register req/s: SQLite store vs memory",
        Target("ratio_min", 0.8),
    ),
    "store_rest_heartbeat": (
        "REST POST /heartbeat req/s: SQLite store vs memory",
        Target("ratio_min", 0.95),
    ),
    "store_rest_healthy": (
        "REST GET /services/{name}/healthy req/s: SQLite store vs memory",
        Target("ratio_min", 0.95),
    ),
    "store_startup_100k": (
        "start-up on a SQLite store of 100,000 instances (first answer on each port)",
        Target("max", 3, "s"),
    ),
    "store_startup_100k_rss": (
        "start-up on a SQLite store of 100,000 instances: RSS above a start on an empty store",
        Target("max", 100, "MB"),
    ),
    "store_burst_10k": (
        "10,000 registrations from 200 concurrent gRPC clients on SQLite: total time",
        Target("max", 5, "s"),
    ),
}
HEARTBEAT = "/v1/discovery/heartbeat"
REGISTER = "/v1/discovery/register"
HEALTHY = "/v1/discovery/services/web/healthy"


@dataclass(frozen=True)
class Size:
    rest: rest_api.Size
    grpc: grpc_heartbeat.Size
    stored: int  # instances in the start-up store
    startup_repeat: int
    burst: register_burst.Size


FULL = Size(rest_api.FULL, grpc_heartbeat.FULL, 100_000, 5, register_burst.FULL)
SMOKE = Size(rest_api.SMOKE, grpc_heartbeat.SMOKE, 2_000, 1, register_burst.SMOKE)


@contextlib.contextmanager
def servers() -> Iterator[tuple[Process, Process]]:
    """A server on `memory` and one on a fresh SQLite file, both serving."""
    with (
        tempfile.TemporaryDirectory(prefix="bench-store-") as folder,
        discovery_server() as memory,
        discovery_server(SERVICE_DISCOVERY_STORE=f"sqlite:{folder}/registry.db") as sqlite,
    ):
        yield memory, sqlite


def rest_rows(size: rest_api.Size) -> list[Row]:
    ensure("wrk")
    names = [(f"svc-{n % 10}", f"i-{n}") for n in range(size.instances)]
    web = [("web", f"web-{n}") for n in range(10)]
    headers = {"Content-Type": "application/json", **REST_AUTH}
    beats = [json.dumps({"service_name": s, "instance_id": i}) for s, i in names]
    bodies = [json.dumps(rest_api.registration(s, i)) for s, i in names]
    luas = {
        "heartbeat": (HEARTBEAT, script(beats, headers, '"success":true')),
        "healthy": (HEALTHY, script([], {}, '"status":"healthy"', times=10)),
        "register": (REGISTER, script(bodies, headers, '"success":true')),
    }
    subjects: dict[str, list[Subject]] = {kind: [] for kind in luas}
    with servers() as (memory, sqlite):
        for name, process in (("memory", memory), ("SQLite", sqlite)):
            port = process.ports["REST"]
            register_many(port, names + web)
            for kind, (path, lua) in luas.items():
                url = f"http://127.0.0.1:{port}{path}"
                subjects[kind].append(Subject(name, process, url, lua, [], []))
        measure_all([s for group in subjects.values() for s in group], size)
    note = (
        f"wrk, 1 thread, {size.connections} connections, {size.seconds:g} s per run, "
        f"{size.instances} instances (healthy: a service of 10); every answer checked"
    )
    rows = []
    for kind in ("register", "heartbeat", "healthy"):
        memory_subject, sqlite_subject = subjects[kind]
        row = vs_memory(f"store_rest_{kind}", sqlite_subject.values, memory_subject.values)
        row.notes.append(note)
        row.note_usage("SQLite", sqlite_subject.runs)
        row.note_usage("memory", memory_subject.runs)
        rows.append(row)
    return rows


def grpc_row(size: grpc_heartbeat.Size) -> Row:
    async def run(memory: Process, sqlite: Process) -> tuple[list[float], list[float]]:
        for server in (memory, sqlite):
            async with Channels(grpc_heartbeat.target(server), 1) as channels:
                await grpc_heartbeat.register_all(channels, size)
        unary, _ = grpc_heartbeat.loads(size)
        bodies = grpc_heartbeat.registrations(size)
        values: dict[str, list[float]] = {"memory": [], "SQLite": []}
        for _ in range(size.repeat):
            for who, server in (("memory", memory), ("SQLite", sqlite)):
                result, _ = await unary(server, size.seconds, grpc_heartbeat.REGISTER, bodies)
                values[who].append(result.checked(f"{who}, Register"))
        return values["SQLite"], values["memory"]

    with servers() as (memory, sqlite):
        ours, base = asyncio.run(run(memory, sqlite))
    row = vs_memory("store_grpc_register", ours, base)
    row.notes.append(
        f"{size.channels} connections x {size.in_flight} calls in flight, {size.seconds:g} s "
        f"per run, {size.instances} instances re-registered; every grpc-status checked"
    )
    return row


def vs_memory(key: str, ours: list[float], memory: list[float]) -> Row:
    title, target = FIGURES[key]
    return Row(key, title, target, Sample(ours, "req/s"), Sample(memory, "req/s"), "memory")


def write_store(path: Path, count: int) -> None:
    """A store file holding `count` heartbeat-only instances in 100 services."""
    metadata = json.dumps({"version": "1.4.2", "zone": "eu-west-1a", "team": "payments"})
    now = time.time()
    rows = [
        (f"svc-{n % 100}", f"i-{n}", "10.0.0.5", 8000 + n % 1000, None, metadata, now, "healthy")
        for n in range(count)
    ]
    store = StoreFile(path)
    try:
        with store.connection as connection:
            connection.execute("BEGIN")
            connection.executemany(UPSERT, rows)
    finally:
        store.close()
    with sqlite3.connect(path) as check:
        (stored,) = check.execute("SELECT count(*) FROM instances").fetchone()
    check.close()
    if stored != count:
        raise RuntimeError(f"wrote {stored} instances, wanted {count}")


def started(path: Path, restored: int) -> tuple[float, int]:
    """Start a server on the store file `path` (as `bench.startup` does): seconds from the spawn
    to the first answer on both ports, and its RSS then; its log must say `restored` instances
    were restored."""
    rss: list[int] = []

    def serving(process: Process) -> None:
        rss.append(process.rss())
        if not any(f"({restored} instances restored)" in line for line in process.lines):
            raise RuntimeError(f"the server did not restore {restored}: {process.tail()}")

    env = {"SERVICE_DISCOVERY_STORE": f"sqlite:{path}", "LOG_LEVEL": "INFO"}
    seconds, *_ = startup.once(env, serving)
    return seconds, rss[0]


def startup_rows(size: Size) -> list[Row]:
    """Start-up time on the full store, and RSS then above a start on an empty store (each
    repetition starts one of each, in turn)."""
    runs, rss, grown = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-store-") as folder:
        path = Path(folder) / "registry.db"
        write_store(path, size.stored)
        for n in range(size.startup_repeat):
            seconds, full = started(path, size.stored)
            _, empty = started(Path(folder) / f"empty-{n}.db", 0)
            runs.append(seconds)
            rss.append(full)
            grown.append((full - empty) / 1e6)
    title, target = FIGURES["store_startup_100k"]
    row = Row("store_startup_100k", title, target, Sample(runs, "s"))
    row.notes.append(
        f"{size.startup_repeat} starts on one file of {size.stored:,} instances (3 metadata "
        f"entries, 100 services); first answers checked; RSS once serving "
        f"{statistics.median(rss) / 1e6:.0f} MB (median)"
    )
    title, target = FIGURES["store_startup_100k_rss"]
    memory = Row("store_startup_100k_rss", title, target, Sample(grown, "MB"))
    memory.notes.append(
        "RSS at the first answers on both ports, minus the same on a fresh empty store, started "
        "in turn in each repetition; the target is that of 100,000 instances registered over "
        "gRPC (`bench.memory`)"
    )
    return [row, memory]


def burst_row(size: register_burst.Size) -> Row:
    bursts = []
    for _ in range(size.repeat):
        with tempfile.TemporaryDirectory(prefix="bench-store-") as folder:
            store = f"sqlite:{folder}/registry.db"
            with discovery_server(SERVICE_DISCOVERY_STORE=store) as server:
                bursts.append(asyncio.run(register_burst.burst(server, size)))
    title, target = FIGURES["store_burst_10k"]
    row = Row("store_burst_10k", title, target, Sample([b.seconds for b in bursts], "s"))
    total = size.clients * size.each
    row.notes.append(
        f"{total:,} Register calls, {size.each} in a row by each of {size.clients} clients, on "
        f"a fresh SQLite file; every status checked; "
        f"{statistics.median(total / b.seconds for b in bursts):,.0f} registrations/s"
    )
    return row


def measure(smoke: bool) -> list[Row]:
    size = SMOKE if smoke else FULL
    rest = rest_rows(size.rest)
    return [rest[0], grpc_row(size.grpc), *rest[1:], *startup_rows(size), burst_row(size.burst)]


def cli(argv: Sequence[str] | None = None) -> None:
    standalone(measure, __doc__, argv)


if __name__ == "__main__":
    cli()
