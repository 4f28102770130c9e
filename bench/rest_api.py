"""REST throughput with wrk: heartbeats against etcd and bare FastAPI, healthy lists against bare.

- `POST /v1/discovery/heartbeat`, rotating over pre-registered heartbeat-only instances, with
  the write secret, each answer checked for 200 and `"success":true`; against etcd's lease
  keepalive through its JSON gateway (`POST /v3/lease/keepalive` rotating over as many leases,
  each answer checked for 200 and a `"TTL"`, which etcd leaves out for an unknown lease) and
  against the same calls on bare FastAPI.
- `GET /v1/discovery/services/{name}/healthy` for a service of 10 instances (3 metadata entries
  each), each answer checked for 200 and 10 healthy records; against bare FastAPI returning the
  same records through its `response_model`.
- `POST /v1/discovery/register`, re-registering the heartbeat instances at the same address
  (what a restarted service does), each answer checked for 200 and `"success":true`; against
  bare FastAPI, for the record (the targets table sets no target).

All servers of a figure run at once on core 0 and are measured in turn, repetition by
repetition, so a slow spell of the machine hits them alike.

    python -m bench.rest_api [--smoke]
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from bench.baselines.etcd import etcd, grant_leases
from bench.common import REST_AUTH, Process, Usage, discovery_server, python_module, usage
from bench.results import Row, Sample, Target, skipped, standalone
from bench.tools import ToolMissing, ensure, script, wrk

FIGURES = {
    "rest_heartbeat_vs_etcd": (
        "REST POST /heartbeat req/s vs etcd lease keepalive (JSON gateway)",
        Target("ratio_min", 1.0),
    ),
    "rest_heartbeat_vs_fastapi": (
        "REST POST /heartbeat req/s vs bare FastAPI",
        Target("ratio_min", 0.9),
    ),
    "rest_healthy": (
        "REST GET /services/{name}/healthy (10 instances) req/s vs bare FastAPI",
        Target("ratio_min", 1.5),
    ),
    "rest_register": (
        "REST POST /register req/s vs bare FastAPI",
        Target("none", 0),
    ),
}
HEARTBEAT = "/v1/discovery/heartbeat"
REGISTER = "/v1/discovery/register"
BARE = "bench.baselines.bare_fastapi"
METADATA = {"version": "1.0.0", "zone": "eu-west-1a", "team": "core"}


@dataclass(frozen=True)
class Size:
    seconds: float
    repeat: int
    connections: int
    instances: int  # heartbeat targets (instances, leases)
    warmup: bool


FULL = Size(seconds=5, repeat=3, connections=64, instances=1000, warmup=True)
SMOKE = Size(seconds=1, repeat=1, connections=8, instances=20, warmup=False)


@dataclass
class Subject:
    """One server measured with one wrk script."""

    name: str
    process: Process
    url: str
    lua: str
    values: list[float]
    runs: list[Usage]


def registration(service: str, instance: str) -> dict[str, object]:
    """A heartbeat-only instance with three metadata entries."""
    return {
        "service_name": service,
        "instance_id": instance,
        "host": "10.0.0.5",
        "port": 8080,
        "health_endpoint": None,
        "metadata": METADATA,
    }


def register_many(port: int, names: Sequence[tuple[str, str]]) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client:
        for service, instance in names:
            body = registration(service, instance)
            answer = client.post(REGISTER, json=body, headers=REST_AUTH)
            answer.raise_for_status()


def measure_all(subjects: Sequence[Subject], size: Size) -> None:
    """Each subject once per repetition, in turn; every response checked."""
    if size.warmup:
        for subject in subjects:
            wrk(subject.url, subject.lua, 1, size.connections).checked(f"{subject.name} warm-up")
    for _ in range(size.repeat):
        for subject in subjects:
            with usage(subject.process) as used:
                result = wrk(subject.url, subject.lua, size.seconds, size.connections)
            subject.values.append(result.checked(subject.name))
            subject.runs.append(used)


def heartbeat_rows(size: Size) -> list[Row]:
    ensure("wrk")
    names = [(f"svc-{n % 10}", f"i-{n}") for n in range(size.instances)]
    bodies = [
        json.dumps({"service_name": s, "instance_id": i}, separators=(",", ":")) for s, i in names
    ]
    headers = {"Content-Type": "application/json", **REST_AUTH}
    ok_lua = script(bodies, headers, '"success":true')
    registrations = [json.dumps(registration(s, i), separators=(",", ":")) for s, i in names]
    register_lua = script(registrations, headers, '"success":true')
    with contextlib.ExitStack() as stack:
        ours = stack.enter_context(discovery_server())
        bare = stack.enter_context(python_module(BARE, kinds=("REST",)))
        subjects = []
        for name, process in (("ours", ours), ("bare FastAPI", bare)):
            port = process.ports["REST"]
            register_many(port, names)
            url = f"http://127.0.0.1:{port}{HEARTBEAT}"
            subjects.append(Subject(name, process, url, ok_lua, [], []))
            url = f"http://127.0.0.1:{port}{REGISTER}"
            subjects.append(Subject(f"{name} register", process, url, register_lua, [], []))
        etcd_missing = ""
        try:
            etcd_process, etcd_port = stack.enter_context(etcd())
        except ToolMissing as exc:
            etcd_missing = str(exc)
        else:
            leases = grant_leases(etcd_port, size.instances)
            etcd_lua = script(
                [f'{{"ID":"{lease}"}}' for lease in leases],
                {"Content-Type": "application/json"},
                '"TTL":"',
            )
            url = f"http://127.0.0.1:{etcd_port}/v3/lease/keepalive"
            subjects.append(Subject("etcd", etcd_process, url, etcd_lua, [], []))
        measure_all(subjects, size)
    by_name = {subject.name: subject for subject in subjects}
    rows = [_row("rest_heartbeat_vs_fastapi", by_name["ours"], by_name["bare FastAPI"])]
    if etcd_missing:
        title, target = FIGURES["rest_heartbeat_vs_etcd"]
        rows.insert(0, skipped("rest_heartbeat_vs_etcd", title, target, etcd_missing))
    else:
        rows.insert(0, _row("rest_heartbeat_vs_etcd", by_name["ours"], by_name["etcd"]))
    note = (
        f"wrk, 1 thread, {size.connections} connections, {size.seconds:g} s per run, rotating "
        f"over {size.instances} instances (leases for etcd); every answer checked"
    )
    for row in rows:
        row.notes.insert(0, note)
    register = _row("rest_register", by_name["ours register"], by_name["bare FastAPI register"])
    register.baseline_name = "bare FastAPI"
    register.notes.insert(
        0,
        f"wrk, 1 thread, {size.connections} connections, {size.seconds:g} s per run, "
        f"re-registering {size.instances} instances at the same address; every answer checked; "
        "no target: ours validates, authorizes and keeps history, the bare app stores",
    )
    return [*rows, register]


def healthy_rows(size: Size) -> list[Row]:
    ensure("wrk")
    names = [("web", f"web-{n}") for n in range(10)]
    with discovery_server() as ours, python_module(BARE, kinds=("REST",)) as bare:
        subjects = []
        shapes = []
        for name, process in (("ours", ours), ("bare FastAPI", bare)):
            port = process.ports["REST"]
            register_many(port, names)
            path = "/v1/discovery/services/web/healthy"
            shapes.append(_shape(port, path))
            lua = script([], {}, '"status":"healthy"', times=10)
            subjects.append(Subject(name, process, f"http://127.0.0.1:{port}{path}", lua, [], []))
        if shapes[0] != shapes[1]:
            raise AssertionError(f"the two servers answer different records: {shapes}")
        measure_all(subjects, size)
    row = _row("rest_healthy", subjects[0], subjects[1])
    row.notes.insert(
        0,
        f"wrk, 1 thread, {size.connections} connections, {size.seconds:g} s per run; every "
        "answer checked for 200 and 10 healthy records (same fields in both servers)",
    )
    return [row]


def _shape(port: int, path: str) -> list[tuple[str, ...]]:
    """The field names of each record a healthy list holds (timestamps differ, not fields)."""
    with httpx.Client(trust_env=False) as client:
        answer = client.get(f"http://127.0.0.1:{port}{path}")
    answer.raise_for_status()
    return [tuple(sorted(record)) for record in answer.json()["healthy_instances"]]


def _row(key: str, ours: Subject, base: Subject) -> Row:
    title, target = FIGURES[key]
    row = Row(key, title, target, Sample(ours.values, "req/s"), Sample(base.values, "req/s"))
    row.baseline_name = base.name
    row.note_usage("ours", ours.runs)
    row.note_usage(base.name, base.runs)
    return row


def measure(smoke: bool) -> list[Row]:
    size = SMOKE if smoke else FULL
    heartbeats = heartbeat_rows(size)
    return heartbeats[:-1] + healthy_rows(size) + heartbeats[-1:]


def cli(argv: Sequence[str] | None = None) -> None:
    standalone(measure, __doc__, argv)


if __name__ == "__main__":
    cli()
