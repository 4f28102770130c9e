"""Shared pieces of the benchmarks: CPU pinning, server processes, a lean HTTP/1.1 client,
closed-loop load with a fixed number of concurrent workers, and result tables."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER_CPU = 0
CLIENT_CPU = 1
SECRET = "bench-secret"
LISTENING = re.compile(r"(REST|gRPC) listening on \S+:(\d+)")


def pin_self(cpu: int = CLIENT_CPU) -> None:
    """Keep the load generator off the server's core (where the machine has two)."""
    with contextlib.suppress(AttributeError, OSError):
        if os.cpu_count() and os.cpu_count() > cpu:  # type: ignore[operator]
            os.sched_setaffinity(0, {cpu})


def pinned(command: Sequence[str], cpu: int = SERVER_CPU) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > cpu:
        return ["taskset", "-c", str(cpu), *command]
    return list(command)


@dataclass
class Served:
    proc: subprocess.Popen[str]
    ports: dict[str, int]


@contextlib.contextmanager
def discovery_server(**env: str) -> Iterator[Served]:
    """`service-discovery` on free loopback ports, pinned to the server core."""
    environment = {
        **os.environ,
        "SERVICE_DISCOVERY_HOST": "127.0.0.1",
        "SERVICE_DISCOVERY_PORT": "0",
        "SERVICE_DISCOVERY_GRPC_PORT": "0",
        "SERVICE_DISCOVERY_SECRET": SECRET,
        "LOG_LEVEL": "WARNING",
        **env,
    }
    command = pinned([sys.executable, "-m", "discovery"])
    with _process(command, environment, expected=("REST", "gRPC")) as served:
        yield served


@contextlib.contextmanager
def module_server(module: str, *args: str) -> Iterator[Served]:
    """A baseline module run as `python -m module --port 0`, announcing `<KIND> listening on`."""
    command = pinned([sys.executable, "-m", module, *args])
    with _process(command, dict(os.environ), expected=None) as served:
        yield served


@contextlib.contextmanager
def _process(
    command: list[str], env: dict[str, str], expected: tuple[str, ...] | None
) -> Iterator[Served]:
    proc = subprocess.Popen(
        command, env=env, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    assert proc.stderr is not None
    ports: dict[str, int] = {}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            raise RuntimeError(f"{command} exited before listening")
        if match := LISTENING.search(line):
            ports[match[1]] = int(match[2])
            if expected is None or set(expected) <= set(ports):
                break
    import threading

    threading.Thread(target=proc.stderr.read, daemon=True).start()
    try:
        yield Served(proc, ports)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class RawHttp:
    """A minimal keep-alive HTTP/1.1 client: far cheaper per request than a full client, so the
    load generator is not what is measured. Checks every status it is told to expect."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"", auth: bool = True) -> int:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self._reader is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        if auth:
            head += f"Authorization: Bearer {SECRET}\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self._writer.write(head.encode() + b"\r\n" + body)
        status_line = await self._reader.readline()
        length = 0
        while (line := await self._reader.readline()) not in (b"\r\n", b""):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await self._reader.readexactly(length)
        return int(status_line.split()[1])

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()


Operation = Callable[[int, int], Awaitable[bool]]


async def closed_loop(operation: Operation, workers: int, seconds: float) -> tuple[int, int]:
    """Run `operation(worker, n)` back to back in `workers` tasks; returns (ok, failed)."""
    deadline = time.perf_counter() + seconds
    ok = failed = 0

    async def worker(index: int) -> None:
        nonlocal ok, failed
        n = 0
        while time.perf_counter() < deadline:
            if await operation(index, n):
                ok += 1
            else:
                failed += 1
            n += 1

    await asyncio.gather(*(worker(i) for i in range(workers)))
    return ok, failed


@dataclass
class Figure:
    """A median of repetitions with its spread."""

    name: str
    values: list[float]
    unit: str

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def __str__(self) -> str:
        return (
            f"{self.median:,.0f} {self.unit} "
            f"(min {min(self.values):,.0f}, max {max(self.values):,.0f})"
        )


def table(rows: list[tuple[str, Figure, Figure]]) -> str:
    """figure | ours | baseline | ratio, as Markdown."""
    lines = ["| figure | ours | bare baseline | ratio |", "|---|---|---|---|"]
    for name, ours, base in rows:
        lines.append(f"| {name} | {ours} | {base} | {ours.median / base.median:.2f} |")
    return "\n".join(lines)
