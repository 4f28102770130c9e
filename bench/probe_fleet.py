"""Probe capacity: a local fleet of instances, the server probing them, REST read latency.

Starts a fake fleet (`bench.fleet`, one process answering `GET /i/{n}`) and the server
(`python -m discovery`, its own process), registers the instances over REST, lets the monitor
settle for a warm-up, then measures for a while:

- probes per second reaching the fleet, against the `n / interval` the schedule aims for;
- how evenly they are spread: probes per second (min / max), and the gap between two probes of
  one instance (percentiles) against the interval;
- the server's CPU use (share of one core) over the window;
- `GET /v1/discovery/services/{name}/healthy` latency, sampled at a steady rate, p50 / p99.

    python -m bench.probe_fleet                 # 10,000 instances, 10 s interval
    python -m bench.probe_fleet --smoke         # a few seconds, tiny sizes
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import re
import statistics
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]  # psutil ships no type information

SECRET = "bench-secret"
AUTH = {"Authorization": f"Bearer {SECRET}"}


@dataclass
class Options:
    instances: int
    services: int
    interval: float
    warmup: float
    duration: float
    ports: int
    concurrency: int
    max_rate: float
    read_rate: float

    @classmethod
    def parse(cls, argv: list[str] | None) -> Options:
        parser = argparse.ArgumentParser(description="Probe capacity bench.")
        parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
        parser.add_argument("--instances", type=int, default=10_000)
        parser.add_argument("--services", type=int, default=100)
        parser.add_argument("--interval", type=float, default=10.0)
        parser.add_argument("--warmup", type=float, default=None, help="default 1.5 intervals")
        parser.add_argument("--duration", type=float, default=30.0)
        parser.add_argument("--ports", type=int, default=1, help="fleet ports (origins)")
        parser.add_argument("--concurrency", type=int, default=100)
        parser.add_argument("--max-rate", type=float, default=1000.0)
        parser.add_argument("--read-rate", type=float, default=50.0, help="REST reads per s")
        args = parser.parse_args(argv)
        if args.smoke:
            args.instances, args.services, args.interval = 200, 4, 1.0
            args.duration, args.warmup = 2.0, 1.5
        warmup = args.warmup if args.warmup is not None else 1.5 * args.interval
        return cls(
            args.instances,
            args.services,
            args.interval,
            warmup,
            args.duration,
            args.ports,
            args.concurrency,
            args.max_rate,
            args.read_rate,
        )


# -- processes --------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def fleet_process(options: Options) -> AsyncIterator[tuple[list[int], int]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.fleet",
        "--count",
        str(options.instances),
        "--ports",
        str(options.ports),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 15)).decode()
        yield [int(port) for port in line.rsplit(" ", 1)[1].split(",")], process.pid
    finally:
        await _end(process)


@contextlib.asynccontextmanager
async def server_process(options: Options) -> AsyncIterator[tuple[str, int, list[str]]]:
    env = dict(os.environ)
    env.update(
        SERVICE_DISCOVERY_HOST="127.0.0.1",
        SERVICE_DISCOVERY_PORT="0",
        SERVICE_DISCOVERY_GRPC_PORT="0",
        SERVICE_DISCOVERY_SECRET=SECRET,
        HEALTH_CHECK_INTERVAL_SECONDS=str(options.interval),
        HEALTH_CHECK_TIMEOUT_SECONDS="2",
        HEALTH_CHECK_MAX_CONCURRENCY=str(options.concurrency),
        HEALTH_CHECK_MAX_PROBES_PER_SECOND=str(options.max_rate),
        LOG_LEVEL="INFO",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "discovery", env=env, stderr=asyncio.subprocess.PIPE
    )
    lines: list[str] = []
    try:
        url = await asyncio.wait_for(_rest_url(process, lines), 30)
        drain = asyncio.create_task(_drain(process, lines))
        yield url, process.pid, lines
        drain.cancel()
    finally:
        await _end(process)


async def _rest_url(process: asyncio.subprocess.Process, lines: list[str]) -> str:
    assert process.stderr is not None
    while line := (await process.stderr.readline()).decode():
        lines.append(line)
        if found := re.search(r"REST listening on (\S+)", line):
            return f"http://{found.group(1)}"
    raise RuntimeError("the server exited:\n" + "".join(lines))


async def _drain(process: asyncio.subprocess.Process, lines: list[str]) -> None:
    assert process.stderr is not None
    while line := (await process.stderr.readline()).decode():
        lines.append(line)


async def _end(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


# -- load -------------------------------------------------------------------------------------


def service_of(n: int, options: Options) -> str:
    return f"svc-{n % options.services}"


async def register_all(client: httpx.AsyncClient, options: Options, ports: list[int]) -> None:
    queue = list(range(options.instances))

    async def worker() -> None:
        while queue:
            n = queue.pop()
            body = {
                "service_name": service_of(n, options),
                "instance_id": f"i-{n}",
                "host": "127.0.0.1",
                "port": ports[n % len(ports)],
                "health_endpoint": f"/i/{n}",
            }
            for attempt in range(3):
                try:
                    response = await client.post("/v1/discovery/register", json=body, headers=AUTH)
                    response.raise_for_status()
                    break
                except httpx.TransportError:
                    if attempt == 2:
                        raise

    await asyncio.gather(*(worker() for _ in range(16)))


async def healthy_count(client: httpx.AsyncClient, options: Options) -> int:
    total = 0
    for s in range(options.services):
        response = await client.get(f"/v1/discovery/services/svc-{s}/healthy")
        total += len(response.json()["healthy_instances"])
    return total


async def sample_reads(client: httpx.AsyncClient, options: Options, until: float) -> list[float]:
    """Latencies (s) of GET /healthy on random services, at a steady rate, until `until`."""
    latencies: list[float] = []
    step = 1.0 / options.read_rate
    next_at = time.monotonic()
    while time.monotonic() < until:
        name = f"svc-{random.randrange(options.services)}"
        started = time.monotonic()
        response = await client.get(f"/v1/discovery/services/{name}/healthy")
        latencies.append(time.monotonic() - started)
        response.raise_for_status()
        next_at += step
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    return latencies


# -- report -----------------------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def probe_figures(hits: list[list[float]], start: float, end: float) -> dict[str, Any]:
    in_window = [at for times in hits for at in times if start <= at < end]
    per_second = [0] * max(1, int(end - start))
    for at in in_window:
        index = int(at - start)
        if index < len(per_second):
            per_second[index] += 1
    gaps = [
        later - earlier
        for times in hits
        for earlier, later in itertools.pairwise(times)
        if start <= later < end
    ]
    never = sum(1 for times in hits if not times)
    return {
        "rate": len(in_window) / (end - start),
        "per_second_min": min(per_second),
        "per_second_max": max(per_second),
        "per_second_cv": statistics.pstdev(per_second) / max(1e-9, statistics.mean(per_second)),
        "gap_p1": percentile(gaps, 0.01),
        "gap_p50": percentile(gaps, 0.50),
        "gap_p99": percentile(gaps, 0.99),
        "gap_max": max(gaps) if gaps else float("nan"),
        "never_probed": never,
    }


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def run(options: Options) -> dict[str, Any]:
    async with (
        fleet_process(options) as (ports, fleet_pid),
        server_process(options) as (url, pid, log_lines),
        httpx.AsyncClient(base_url=url, timeout=10, trust_env=False) as client,
    ):
        load_before = os.getloadavg()[0]
        started = time.monotonic()
        await register_all(client, options, ports)
        registered = time.monotonic()
        await asyncio.sleep(options.warmup)
        processes = [psutil.Process(pid), psutil.Process(fleet_pid), psutil.Process()]
        cpu_before, window_start = [_cpu(p) for p in processes], time.monotonic()
        latencies = await sample_reads(client, options, window_start + options.duration)
        window_end, cpu_after = time.monotonic(), [_cpu(p) for p in processes]
        healthy = await healthy_count(client, options)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports[0]}") as fleet:
            hits = (await fleet.get("/__hits", timeout=30)).json()
    window = window_end - window_start
    server_cpu, fleet_cpu, bench_cpu = (
        (after - before) / window for before, after in zip(cpu_before, cpu_after, strict=True)
    )
    return {
        "register_seconds": registered - started,
        "window_seconds": window,
        "server_cpu": server_cpu,
        "fleet_cpu": fleet_cpu,
        "bench_cpu": bench_cpu,
        "read_p50": percentile(latencies, 0.50),
        "read_p99": percentile(latencies, 0.99),
        "read_max": max(latencies),
        "reads": len(latencies),
        "healthy": healthy,
        "warnings": [line.strip() for line in log_lines if " WARNING " in line],
        "load_average": (load_before, os.getloadavg()[0]),
        **probe_figures(hits, window_start, window_end),
    }


def report(options: Options, figures: dict[str, Any]) -> str:
    target = min(options.instances / options.interval, options.max_rate)
    ms = 1000.0
    lines = [
        f"fleet: {options.instances} instances in {options.services} services on "
        f"{options.ports} port(s); interval {options.interval}s; "
        f"concurrency {options.concurrency}; rate cap {options.max_rate}/s",
        f"registered in {figures['register_seconds']:.1f}s; measured for "
        f"{figures['window_seconds']:.1f}s after {options.warmup:.1f}s warm-up",
        f"probes/s: {figures['rate']:.0f} (target {target:.0f}); per second min "
        f"{figures['per_second_min']} max {figures['per_second_max']} "
        f"(cv {figures['per_second_cv']:.3f})",
        f"gap between probes of one instance: p1 {figures['gap_p1']:.2f}s p50 "
        f"{figures['gap_p50']:.2f}s p99 {figures['gap_p99']:.2f}s max {figures['gap_max']:.2f}s",
        f"server CPU: {figures['server_cpu'] * 100:.0f}% of one core (fleet "
        f"{figures['fleet_cpu'] * 100:.0f}%, bench client {figures['bench_cpu'] * 100:.0f}%)",
        f"REST GET /healthy ({options.instances // options.services} instances per service, "
        f"{figures['reads']} reads): p50 {figures['read_p50'] * ms:.1f}ms p99 "
        f"{figures['read_p99'] * ms:.1f}ms max {figures['read_max'] * ms:.1f}ms",
        f"healthy at the end: {figures['healthy']}/{options.instances}; never probed: "
        f"{figures['never_probed']}",
    ]
    before, after = figures["load_average"]
    lines.append(
        f"machine: {os.cpu_count()} CPUs, load average {before:.2f} before, {after:.2f} after"
    )
    lines += [f"server warning: {line}" for line in figures["warnings"]]
    return "\n".join(lines)


def cli(argv: list[str] | None = None) -> None:
    options = Options.parse(argv)
    figures = asyncio.run(run(options))
    print(report(options, figures), flush=True)


if __name__ == "__main__":
    cli()
