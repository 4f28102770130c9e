"""What the benches share: a server (or any helper) in a child process, and a few statistics.

Each bench measures a server in its own process, driven by clients in another, so the figures
are the server's and not the load generator's. Everything binds to 127.0.0.1 on free ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import statistics
import sys
from collections.abc import AsyncIterator, Sequence

import psutil

_LISTENING = re.compile(rb"(REST|gRPC) listening on [^\s]*:(\d+)")


class Child:
    """A child process speaking lines on stdout; stderr is drained so it never blocks."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.stderr: list[bytes] = []
        self._drain = asyncio.ensure_future(self._read_stderr())

    @property
    def pid(self) -> int:
        return self.process.pid

    async def line(self, within: float) -> str:
        """The next stdout line; raises when the child ends or is silent too long."""
        assert self.process.stdout is not None
        raw = await asyncio.wait_for(self.process.stdout.readline(), within)
        if not raw:
            tail = b"".join(self.stderr[-20:]).decode(errors="replace")
            raise RuntimeError(f"child {self.pid} ended: {tail}")
        return raw.decode().strip()

    def rss(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        self._drain.cancel()

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self.stderr.append(line)
            del self.stderr[:-200]


async def spawn(args: Sequence[str], env: dict[str, str] | None = None) -> Child:
    """`python args...` with this checkout on the path."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.getcwd(), **(env or {})},
    )
    return Child(process)


@contextlib.asynccontextmanager
async def discovery_server(**env: str) -> AsyncIterator[tuple[Child, int]]:
    """The real server (`python -m discovery`) on free ports; yields it and its gRPC port."""
    settings = {
        "SERVICE_DISCOVERY_HOST": "127.0.0.1",
        "SERVICE_DISCOVERY_PORT": "0",
        "SERVICE_DISCOVERY_GRPC_PORT": "0",
        "LOG_LEVEL": "INFO",
        **env,
    }
    child = await spawn(["-m", "discovery"], settings)
    try:
        grpc_port = await _grpc_port(child)
        yield child, grpc_port
    finally:
        await child.stop()


async def _grpc_port(child: Child, within: float = 20) -> int:
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        for line in child.stderr:
            match = _LISTENING.search(line)
            if match and match.group(1) == b"gRPC":
                return int(match.group(2))
        if child.process.returncode is not None:
            break
        await asyncio.sleep(0.05)
    raise RuntimeError("the server did not start: " + b"".join(child.stderr).decode())


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), interpolated; the maximum for q=100."""
    if len(values) == 1:
        return values[0]
    return (
        statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]
        if q < 100
        else max(values)
    )


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"
