"""What every bench shares: the two cores, child processes, the write secret, CPU accounting.

The server under test (or its baseline) runs on core 0 (`taskset -c 0`); the bench itself, its
load generators and helper processes run on core 1. Every child binds 127.0.0.1 on free ports
and announces them on stderr as `REST listening on HOST:PORT` / `gRPC listening on HOST:PORT`,
the lines `python -m discovery` logs once it serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
SERVER_CPU = 0
CLIENT_CPU = 1
SECRET = "bench-secret"
REST_AUTH = {"Authorization": f"Bearer {SECRET}"}
GRPC_AUTH = (("authorization", f"Bearer {SECRET}"),)
LISTENING = re.compile(r"(REST|gRPC) listening on \S+:(\d+)")


class BenchError(RuntimeError):
    """A figure could not be measured honestly (a failed request, a child that died, ...)."""


def cores() -> int:
    return os.cpu_count() or 1


def pin_self(cpu: int = CLIENT_CPU) -> None:
    """Move every thread of this process (and so its future children) to `cpu`."""
    if cores() <= cpu:
        return
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), {cpu})


def pinned(command: Sequence[str], cpu: int = SERVER_CPU) -> list[str]:
    """`command` run on one core (when the machine has it and taskset is there)."""
    if shutil.which("taskset") and cores() > cpu:
        return ["taskset", "-c", str(cpu), *command]
    return list(command)


class Process:
    """A child process pinned to one core.

    Its stderr is kept (the last 200 lines) and watched for the listening lines; its stdout, when
    asked for, is read line by line through `line()` / `aline()`.
    """

    def __init__(
        self, command: Sequence[str], env: dict[str, str] | None = None, cpu: int = SERVER_CPU
    ) -> None:
        self.command = pinned(command, cpu)
        self.ports: dict[str, int] = {}
        self.listening_at: dict[str, float] = {}
        self.stderr: deque[str] = deque(maxlen=200)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._listening = threading.Condition()
        environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.command,
            env=environment,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read_stderr, daemon=True).start()
        threading.Thread(target=self._read_stdout, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_listening(self, kinds: Sequence[str], timeout: float = 30) -> dict[str, int]:
        """The ports of `kinds` ("REST", "gRPC"), once announced; raises if the child dies."""
        deadline = time.monotonic() + timeout
        with self._listening:
            while not set(kinds) <= set(self.ports):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(
                        f"{self.command} did not start (exit status {self.proc.poll()}, "
                        f"ports so far {self.ports}): {self.tail()}"
                    )
                self._listening.wait(0.05)
        return dict(self.ports)

    def line(self, timeout: float) -> str:
        """The next stdout line; raises when the child ends or stays silent too long."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise BenchError(f"{self.command}: no answer within {timeout} s") from None
        if line is None:
            raise BenchError(f"{self.command} ended: {self.tail()}")
        return line

    async def aline(self, within: float) -> str:
        return await asyncio.to_thread(self.line, within)

    def rss(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)

    def tail(self) -> str:
        return "".join(list(self.stderr)[-20:])

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError):
                stream.close()  # type: ignore[union-attr]

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            now = time.monotonic()
            self.stderr.append(line)
            if match := LISTENING.search(line):
                with self._listening:
                    self.ports[match[1]] = int(match[2])
                    self.listening_at[match[1]] = now
                    self._listening.notify_all()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.strip())
        self._lines.put(None)


def server_env(**env: str) -> dict[str, str]:
    """The environment of `python -m discovery` in a bench: loopback, free ports, a secret,
    the `memory` store unless `env` names another."""
    return {
        "SERVICE_DISCOVERY_HOST": "127.0.0.1",
        "SERVICE_DISCOVERY_PORT": "0",
        "SERVICE_DISCOVERY_GRPC_PORT": "0",
        "SERVICE_DISCOVERY_SECRET": SECRET,
        "SERVICE_DISCOVERY_STORE": "memory",
        "LOG_LEVEL": "WARNING",
        **env,
    }


@contextlib.contextmanager
def discovery_server(**env: str) -> Iterator[Process]:
    """`python -m discovery` on core 0, serving both ports, with the bench's write secret."""
    with python_module("discovery", kinds=("REST", "gRPC"), env=server_env(**env)) as served:
        yield served


@contextlib.contextmanager
def python_module(
    module: str,
    *args: str,
    kinds: Sequence[str] = (),
    env: dict[str, str] | None = None,
    cpu: int = SERVER_CPU,
) -> Iterator[Process]:
    """`python -m module args...` on `cpu`, once it announced the listening `kinds`."""
    child = Process([sys.executable, "-m", module, *args], env, cpu)
    try:
        if kinds:
            child.wait_listening(kinds)
        yield child
    finally:
        child.stop()


def own_cpu_seconds() -> float:
    """CPU time of this process and of its children already waited for (wrk)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclass
class Usage:
    """Shares of one core used over a measurement window, by the server and by the load."""

    seconds: float = 0.0
    server: float = 0.0
    client: float = 0.0

    @property
    def client_bound(self) -> bool:
        """The load generator, not the server, set the pace: its core was full, the server's
        was not."""
        return self.client > 0.9 and self.server < 0.85


@contextlib.contextmanager
def usage(server: Process | None, client: Process | None = None) -> Iterator[Usage]:
    """Measure CPU shares over the block; the client is this process (and its waited children)
    unless another child process is named."""
    result = Usage()

    def client_seconds() -> float:
        return client.cpu_seconds() if client is not None else own_cpu_seconds()

    server_before = server.cpu_seconds() if server is not None else 0.0
    client_before, started = client_seconds(), time.monotonic()
    yield result
    result.seconds = max(time.monotonic() - started, 1e-9)
    result.client = (client_seconds() - client_before) / result.seconds
    if server is not None:
        result.server = (server.cpu_seconds() - server_before) / result.seconds
