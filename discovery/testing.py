"""Helpers for testing against this server: a fake clock, an in-process server on free ports,
the server as a subprocess, and a polling helper.

async with run_server(secret="s3cret") as server:
    async with httpx.AsyncClient(base_url=server.rest_url) as client:
        ...
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        ...

async with await ServerProcess.start(env={"SERVICE_DISCOVERY_STORE": "memory"}) as process:
    ...  # process.rest_url, process.grpc_target; await process.stop() -> exit status

with SyncServerProcess(env={...}) as process:  # the same, for threaded code (benches, fixtures)
    process.wait_listening()
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from discovery.core.clock import Clock
from discovery.core.settings import Settings
from discovery.core.store.base import Store
from discovery.server import DiscoveryServer

#: The console script of the interpreter running the tests.
SCRIPT = Path(sys.executable).with_name("service-discovery")


class FakeClock:
    """A clock that moves only when told to; wall and monotonic time move together."""

    def __init__(self, wall: float = 1_800_000_000.0, monotonic: float = 10_000.0) -> None:
        self._wall = wall
        self._monotonic = monotonic

    def time(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        self._wall += seconds
        self._monotonic += seconds


def test_settings(**changes: Any) -> Settings:
    """Settings for an in-process server: loopback, free ports, the `memory` store (nothing
    written to disk), defaults otherwise."""
    return Settings(host="127.0.0.1", rest_port=0, grpc_port=0, store="memory").replace(**changes)


@contextlib.asynccontextmanager
async def run_server(
    settings: Settings | None = None,
    clock: Clock | None = None,
    store: Store | None = None,
    **changes: Any,
) -> AsyncIterator[DiscoveryServer]:
    """Start a server on the running loop (free ports on 127.0.0.1 and the `memory` store
    unless told otherwise; `store` replaces the one the settings name)."""
    settings = (settings or test_settings()).replace(**changes)
    server = DiscoveryServer(settings, clock, store)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


test_settings.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


#: The line a server (or a bench baseline) logs on stderr once it serves: `REST listening on
#: HOST:PORT`, `gRPC listening on HOST:PORT` (see `DiscoveryServer.start`).
LISTENING = re.compile(r"(REST|gRPC) listening on (\S+):(\d+)")


def listening(line: str) -> tuple[str, int] | None:
    """`("REST", port)` or `("gRPC", port)` when `line` announces a bound port."""
    match = LISTENING.search(line)
    return None if match is None else (match[1], int(match[3]))


def server_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment plus loopback, free ports and the `memory` store, plus `env`."""
    return {
        **os.environ,
        "SERVICE_DISCOVERY_HOST": "127.0.0.1",
        "SERVICE_DISCOVERY_PORT": "0",
        "SERVICE_DISCOVERY_GRPC_PORT": "0",
        "SERVICE_DISCOVERY_STORE": "memory",
        **(env or {}),
    }


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], within: float = 10.0, every: float = 0.01
) -> float:
    """Wait until `check()` (a function or a coroutine function) is true; returns how long it
    took. Raises `TimeoutError` after `within` seconds."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        outcome = check()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome:
            return loop.time() - start
        if loop.time() - start > within:
            raise TimeoutError(f"not true within {within}s: {check!r}")
        await asyncio.sleep(every)


class _Ports:
    """Where a child process said it listens, and what it logged."""

    lines: Sequence[str]
    ports: dict[str, int]
    scheme: str  # "https" when the environment names a TLS certificate

    @property
    def rest_port(self) -> int:
        return self.ports["REST"]

    @property
    def grpc_port(self) -> int:
        return self.ports["gRPC"]

    @property
    def rest_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def output(self) -> str:
        """Everything logged so far."""
        return "".join(self.lines)


class ServerProcess(_Ports):
    """The `service-discovery` console script in a subprocess, on free ports of 127.0.0.1.

    `await ServerProcess.start(env={...})` returns once both `listening` lines were logged;
    `rest_url` and `grpc_target` tell where. Its stderr is kept in `lines`. `stop()` sends
    SIGTERM (or `kill()` SIGKILL) and returns the exit status.
    """

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.ports: dict[str, int] = {}
        self.scheme = "http"
        self._reader: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    @classmethod
    async def start(
        cls,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        command: Sequence[str] | None = None,
        within: float = 60.0,
        wait: bool = True,
    ) -> ServerProcess:
        """Spawn the server with the current environment plus `env` (loopback, port 0 and the
        `memory` store unless `env` says otherwise); with `wait`, return once it listens on
        both ports."""
        environment = server_env(env)
        proc = await asyncio.create_subprocess_exec(
            *(command or [str(SCRIPT)]),
            *args,
            env=environment,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        server = cls(proc)
        if environment.get("SERVICE_DISCOVERY_TLS_CERT_FILE"):
            server.scheme = "https"
        server._reader = asyncio.get_running_loop().create_task(server._read())
        if wait:
            await server.wait_listening(within)
        return server

    async def wait_listening(self, within: float = 60.0) -> None:
        """Until both ports are announced; `AssertionError` with the log if it exits first."""
        waiter = asyncio.ensure_future(self._listening.wait())
        exited = asyncio.ensure_future(self.proc.wait())
        try:
            await asyncio.wait({waiter, exited}, timeout=within, return_when="FIRST_COMPLETED")
        finally:
            waiter.cancel()
            exited.cancel()
        if not self._listening.is_set():
            if self._reader is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._reader), 2)
            raise AssertionError("the server did not start listening:\n" + self.output)

    async def wait_for_line(self, text: str, within: float = 30.0) -> str:
        """The first logged line containing `text`, waiting for it."""
        found: list[str] = []

        def seen() -> bool:
            found.extend(line for line in self.lines if text in line)
            return bool(found)

        await eventually(seen, within)
        return found[0]

    async def stop(self, sig: int = signal.SIGTERM, within: float = 20.0) -> int:
        """Send `sig` (SIGTERM by default) and wait for the exit status."""
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        return await self.wait(within)

    async def kill(self) -> int:
        """SIGKILL, and the exit status."""
        return await self.stop(signal.SIGKILL)

    async def wait(self, within: float = 30.0) -> int:
        """The exit status, once the process ended and its log was read."""
        try:
            code = await asyncio.wait_for(self.proc.wait(), within)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(f"still running after {within}s:\n" + self.output) from None
        if self._reader is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader), 5)
        return code

    async def __aenter__(self) -> ServerProcess:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()

    async def _read(self) -> None:
        stream = self.proc.stderr
        assert stream is not None
        while line := (await stream.readline()).decode(errors="replace"):
            self.lines.append(line)
            if bound := listening(line):
                self.ports[bound[0]] = bound[1]
                if len(self.ports) == 2:
                    self._listening.set()


class SyncServerProcess(_Ports):
    """`ServerProcess` for threaded code: the child's stderr is read by a thread.

    `command` is the console script unless given (a bench baseline announces its ports the same
    way). `stdin` and `stdout` are pipes when asked for, for a child driven line by line.
    """

    def __init__(
        self,
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        *,
        cwd: str | Path | None = None,
        stdin: bool = False,
        stdout: bool = False,
    ) -> None:
        self.command = list(command or [str(SCRIPT)])
        self.ports = {}
        environment = server_env(env)
        self.scheme = "https" if environment.get("SERVICE_DISCOVERY_TLS_CERT_FILE") else "http"
        self.listening_at: dict[str, float] = {}
        self.lines: collections.deque[str] = collections.deque(maxlen=1000)
        self._changed = threading.Condition()
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.command,
            env=environment,
            cwd=cwd,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def wait_listening(
        self, kinds: Sequence[str] = ("REST", "gRPC"), within: float = 60.0
    ) -> dict[str, int]:
        """The ports of `kinds` once announced; `AssertionError` with the log if the child
        exits first or stays silent for `within` seconds."""
        deadline = time.monotonic() + within
        with self._changed:
            while not set(kinds) <= set(self.ports):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"{self.command} did not start listening (exit status "
                        f"{self.proc.poll()}):\n{self.output}"
                    )
                self._changed.wait(0.05)
        return dict(self.ports)

    def stop(self, sig: int = signal.SIGTERM, within: float = 20.0) -> int:
        """Send `sig`, SIGKILL after `within` seconds; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=within)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        return self.proc.returncode

    def __enter__(self) -> SyncServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop(signal.SIGKILL)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        with contextlib.suppress(ValueError, OSError):  # closed by stop()
            for line in self.proc.stderr:
                now = time.monotonic()
                with self._changed:
                    self.lines.append(line)
                    if bound := listening(line):
                        self.ports[bound[0]] = bound[1]
                        self.listening_at[bound[0]] = now
                    self._changed.notify_all()
