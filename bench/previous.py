"""The hot paths against the tree of the previous full table, measured in the same run.

A figure measured on another night is no baseline on a shared machine: the same server's rate
moves by a third between runs. So the previous tree (a git commit, `BENCH_PREVIOUS`, by default
the one the README's last full table was measured on) is unpacked with `git archive` into a
temporary folder and run side by side with this tree, on the same dependencies, core and
load, repetition by repetition in turn:

- REST `POST /heartbeat` (wrk, rotating over 1,000 heartbeat-only instances, every answer
  checked for `"success":true`);
- REST `GET /services/{name}/healthy` for a service of 10 instances (every answer checked for
  10 healthy records);
- gRPC unary `Heartbeat` (`bench/grpc_load.cjs`, every grpc-status checked).

A ratio below 1 is this tree being slower than the previous one.

    python -m bench.previous [--smoke]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import REST_AUTH, ROOT, Process, Usage, server_env, usage
from bench.grpc_heartbeat import FULL as GRPC_FULL
from bench.grpc_heartbeat import HEARTBEAT as GRPC_HEARTBEAT
from bench.grpc_heartbeat import SMOKE as GRPC_SMOKE
from bench.grpc_heartbeat import loads, names
from bench.grpc_heartbeat import register_all as grpc_register_all
from bench.grpc_heartbeat import target as grpc_target
from bench.grpc_load import Channels
from bench.rest_api import FULL as REST_FULL
from bench.rest_api import HEARTBEAT, register_many
from bench.rest_api import SMOKE as REST_SMOKE
from bench.results import Row, Sample, Target, skipped, standalone
from bench.tools import ToolMissing, ensure, script, wrk
from discovery.v1 import discovery_pb2 as pb

#: The commit of the README's last full table (2026-11-28).
DEFAULT_PREVIOUS = "96a8e4363a69ee0573dce4ad56b968b548756ca9"
WITHIN = Target("ratio_min", 0.95)
FIGURES = {
    "previous_rest_heartbeat": ("REST POST /heartbeat req/s vs the previous table's tree", WITHIN),
    "previous_rest_healthy": (
        "REST GET /services/{name}/healthy (10 instances) req/s vs the previous table's tree",
        WITHIN,
    ),
    "previous_grpc_heartbeat": (
        "gRPC unary Heartbeat req/s vs the previous table's tree",
        WITHIN,
    ),
}
SERVICE = "web"
REPEAT = 5
#: The healthy list's instances are registered once and must stay healthy for the whole run.
LONG_LIVED = {
    "SERVICE_HEARTBEAT_INTERVAL_SECONDS": "3600",
    "SERVICE_REGISTRATION_TTL_SECONDS": "7200",
}


@dataclass
class Side:
    """One tree's server and what was measured on it, figure by figure."""

    name: str
    process: Process
    values: dict[str, list[float]] = field(default_factory=dict)
    usages: dict[str, list[Usage]] = field(default_factory=dict)

    def add(self, key: str, value: float, used: Usage) -> None:
        self.values.setdefault(key, []).append(value)
        self.usages.setdefault(key, []).append(used)


def previous_ref() -> str:
    return os.environ.get("BENCH_PREVIOUS", DEFAULT_PREVIOUS)


@contextlib.contextmanager
def unpacked(ref: str) -> Iterator[Path]:
    """The tree of commit `ref` in a temporary folder (raises ToolMissing when the clone does
    not hold it, e.g. a shallow one)."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", ref],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        raise ToolMissing(f"the previous tree {ref} is not in this clone: {exc}") from exc
    with tempfile.TemporaryDirectory(prefix="bench-previous-") as folder:
        with tempfile.TemporaryFile() as file:
            file.write(archive.stdout)
            file.seek(0)
            with tarfile.open(fileobj=file) as tar:
                tar.extractall(folder, filter="data")
        yield Path(folder)


@contextlib.contextmanager
def server(root: Path) -> Iterator[Process]:
    """`python -m discovery` of the tree at `root`, on core 0, with the bench's settings."""
    child = Process([sys.executable, "-m", "discovery"], server_env(**LONG_LIVED), root=root)
    try:
        child.wait_listening(("REST", "gRPC"))
        yield child
    finally:
        child.stop()


def rest_scripts(smoke: bool) -> tuple[str, str, list[tuple[str, str]]]:
    """The heartbeat and healthy wrk scripts, and the instances they need registered."""
    count = (REST_SMOKE if smoke else REST_FULL).instances
    instances = [(f"svc-{n % 10}", f"i-{n}") for n in range(count)]
    bodies = [
        json.dumps({"service_name": s, "instance_id": i}, separators=(",", ":"))
        for s, i in instances
    ]
    headers = {"Content-Type": "application/json", **REST_AUTH}
    heartbeat = script(bodies, headers, '"success":true')
    healthy = script([], {}, '"status":"healthy"', times=10)
    return heartbeat, healthy, instances + [(SERVICE, f"{SERVICE}-{n}") for n in range(10)]


async def prepare(sides: Sequence[Side], smoke: bool) -> None:
    _, _, instances = rest_scripts(smoke)
    size = GRPC_SMOKE if smoke else GRPC_FULL
    for side in sides:
        await asyncio.to_thread(register_many, side.process.ports["REST"], instances)
        async with Channels(grpc_target(side.process), 1) as channels:
            await grpc_register_all(channels, size)


async def measure_sides(sides: Sequence[Side], smoke: bool) -> None:
    rest = REST_SMOKE if smoke else REST_FULL
    grpc = GRPC_SMOKE if smoke else GRPC_FULL
    heartbeat_lua, healthy_lua, _ = rest_scripts(smoke)
    unary, _ = loads(grpc)
    beats = [
        pb.HeartbeatRequest(service_name=s, instance_id=i).SerializeToString()
        for s, i in names(grpc)
    ]
    paths = {
        "previous_rest_heartbeat": (HEARTBEAT, heartbeat_lua),
        "previous_rest_healthy": (f"/v1/discovery/services/{SERVICE}/healthy", healthy_lua),
    }

    def rest_once(side: Side, key: str, seconds: float) -> tuple[float, Usage]:
        path, lua = paths[key]
        url = f"http://127.0.0.1:{side.process.ports['REST']}{path}"
        with usage(side.process) as used:
            rate = wrk(url, lua, seconds, rest.connections).checked(f"{side.name}, {key}")
        return rate, used

    if rest.warmup:
        for side in sides:
            for key in paths:
                await asyncio.to_thread(rest_once, side, key, 1)
            (await unary(side.process, grpc.warmup, GRPC_HEARTBEAT, beats))[0].checked("warm-up")
    for _ in range(REPEAT if not smoke else 1):
        for side in sides:
            for key in paths:
                side.add(key, *await asyncio.to_thread(rest_once, side, key, rest.seconds))
            result, used = await unary(side.process, grpc.seconds, GRPC_HEARTBEAT, beats)
            side.add("previous_grpc_heartbeat", result.checked(f"{side.name}, Heartbeat"), used)


def measure(smoke: bool) -> list[Row]:
    ensure("wrk")
    ref = previous_ref()
    with contextlib.ExitStack() as stack:
        try:
            folder = stack.enter_context(unpacked(ref))
        except ToolMissing as exc:
            return [skipped(key, *FIGURES[key], str(exc)) for key in FIGURES]
        ours = stack.enter_context(server(ROOT))
        before = stack.enter_context(server(folder))
        sides = [Side("this tree", ours), Side(f"tree {ref[:7]}", before)]

        async def run() -> None:
            await prepare(sides, smoke)
            await measure_sides(sides, smoke)

        asyncio.run(run())
    return [row(key, sides[0], sides[1], ref, smoke) for key in FIGURES]


def row(key: str, ours: Side, before: Side, ref: str, smoke: bool) -> Row:
    title, target = FIGURES[key]
    rest = REST_SMOKE if smoke else REST_FULL
    grpc = GRPC_SMOKE if smoke else GRPC_FULL
    unit = "req/s"
    result = Row(
        key,
        title,
        target,
        Sample(ours.values[key], unit),
        Sample(before.values[key], unit),
        before.name,
        notes=[
            f"the previous tree is commit {ref}, unpacked with git archive and run on this "
            "tree's dependencies; both servers up at once on core 0, measured in turn",
            f"wrk, 1 thread, {rest.connections} connections, {rest.seconds:g} s per run"
            if key.startswith("previous_rest")
            else f"gRPC load: {grpc.channels} connections x {grpc.in_flight} calls in flight, "
            f"{grpc.seconds:g} s per run",
        ],
    )
    result.note_usage("this tree", ours.usages[key])
    result.note_usage(before.name, before.usages[key])
    return result


def cli(argv: Sequence[str] | None = None) -> None:
    standalone(measure, __doc__, argv)


if __name__ == "__main__":
    cli()
