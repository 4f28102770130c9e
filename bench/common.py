"""What every bench shares: the two cores, child processes, the write secret, CPU accounting.

The server under test (or its baseline) runs on core 0 (`taskset -c 0`); the bench itself, its
load generators and helper processes run on core 1. Every server child binds 127.0.0.1 on free
ports and announces them on stderr as `python -m discovery` does; `discovery.testing` reads
those lines (`SyncServerProcess`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import resource
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from discovery.testing import SyncServerProcess

ROOT = Path(__file__).resolve().parent.parent
SERVER_CPU = 0
CLIENT_CPU = 1
SECRET = "bench-secret"
REST_AUTH = {"Authorization": f"Bearer {SECRET}"}
GRPC_AUTH = (("authorization", f"Bearer {SECRET}"),)


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


class Process(SyncServerProcess):
    """A child process pinned to one core, its stdout read line by line (`line()`, `aline()`).

    Its stderr is kept and watched for the listening lines (see `SyncServerProcess`).
    """

    def __init__(
        self,
        command: Sequence[str],
        env: dict[str, str] | None = None,
        cpu: int = SERVER_CPU,
        root: Path = ROOT,
    ) -> None:
        """`root`: the source tree the child imports from (another tree for `bench.previous`)."""
        self._lines: queue.Queue[str | None] = queue.Queue()
        environment = {"PYTHONPATH": str(root), **(env or {})}
        super().__init__(pinned(command, cpu), environment, cwd=root, stdin=True, stdout=True)
        threading.Thread(target=self._read_stdout, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_listening(
        self, kinds: Sequence[str] = ("REST", "gRPC"), within: float = 30
    ) -> dict[str, int]:
        """The ports of `kinds`, once announced; `BenchError` if the child dies first."""
        try:
            return super().wait_listening(kinds, within)
        except AssertionError as exc:
            raise BenchError(str(exc)[-4000:]) from None

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
        return "".join(list(self.lines)[-20:])

    def stop(self, sig: int = signal.SIGTERM, within: float = 15.0) -> int:
        """SIGTERM, then SIGKILL after 15 s."""
        return super().stop(sig, within)

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        with contextlib.suppress(ValueError, OSError):  # closed by stop()
            for line in self.proc.stdout:
                self._lines.put(line.strip())
        self._lines.put(None)


def server_env(**env: str) -> dict[str, str]:
    """The environment of `python -m discovery` in a bench (beyond `discovery.testing`'s
    loopback and free ports): the write secret, warnings only, the `memory` store unless `env`
    names another."""
    return {
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
