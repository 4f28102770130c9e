"""The composition root: settings from the edge, one core, both servers on one event loop.

`service-discovery` and `python -m discovery` both land in `main()`. `DiscoveryServer` is also what
`discovery.testing.run_server` starts in-process for tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc
import uvicorn

from discovery.clock import Clock
from discovery.config import ENV_VARS, ConfigError, Settings
from discovery.core import DiscoveryCore
from discovery.grpc_api import build_server
from discovery.grpc_health import HealthService
from discovery.heap import settle_heap
from gateway_rest.app import create_app

log = logging.getLogger("discovery")
# The bound addresses are announced whatever LOG_LEVEL says: with port 0, that line is the only
# way to learn them.
announce = logging.getLogger("discovery.listening")
announce.setLevel(logging.INFO)

# The secret is read from the environment only: a flag would show it in `ps`.
_NO_FLAG = frozenset({"secret"})


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the composition root owns SIGTERM and SIGINT,
    because uvicorn would re-raise a captured signal after serving and kill the process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


class DiscoveryServer:
    """The REST facade and the gRPC API over one `DiscoveryCore`, on the running event loop."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.core = DiscoveryCore(settings, clock)
        self.rest_port = 0
        self.grpc_port = 0
        self._grpc: grpc.aio.Server | None = None
        self._health: HealthService | None = None
        self._rest: _Uvicorn | None = None
        self._rest_task: asyncio.Task[None] | None = None
        self._stopped = False

    @property
    def rest_url(self) -> str:
        """Base URL of the REST facade, for clients on this machine."""
        return f"http://{_join(_local(self.settings.host), self.rest_port)}"

    @property
    def grpc_target(self) -> str:
        """gRPC target of the API, for clients on this machine."""
        return _join(_local(self.settings.host), self.grpc_port)

    async def start(self) -> None:
        """Bind both ports, start serving and the background work, log the bound addresses."""
        settings = self.settings
        await self.core.start()
        self._grpc, self._health = build_server(self.core)
        self.grpc_port = self._grpc.add_insecure_port(_join(settings.host, settings.grpc_port))
        await self._grpc.start()
        sock = _bind(settings.host, settings.rest_port)
        self.rest_port = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(self.core),
            lifespan="off",
            log_config=None,
            access_log=False,
            http="httptools",
            ws="none",
            timeout_graceful_shutdown=max(1, math.ceil(settings.shutdown_grace)),
        )
        self._rest = _Uvicorn(config)
        self._rest_task = asyncio.create_task(self._rest.serve(sockets=[sock]), name="rest")
        while not self._rest.started:
            if self._rest_task.done():
                await self._rest_task
                raise RuntimeError("the REST server stopped during start-up")
            await asyncio.sleep(0.005)
        announce.info("REST listening on %s", _join(settings.host, self.rest_port))
        announce.info("gRPC listening on %s", _join(settings.host, self.grpc_port))
        if self.core.auth.open:
            log.warning(
                "SERVICE_DISCOVERY_SECRET is not set: register, heartbeat and unregister "
                "are open to anyone"
            )

    async def stop(self) -> None:
        """Report NOT_SERVING, end every stream, stop both servers; bounded by the grace."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.settings.shutdown_grace
        log.info("Shutting down (grace %ss)", grace)
        if self._health is not None:
            self._health.shutdown()
        self.core.begin_shutdown()
        waits = []
        if self._rest is not None and self._rest_task is not None:
            self._rest.should_exit = True
            waits.append(asyncio.wait_for(asyncio.shield(self._rest_task), grace + 1))
        if self._grpc is not None:
            waits.append(self._grpc.stop(grace))
        for outcome in await asyncio.gather(*waits, return_exceptions=True):
            if isinstance(outcome, BaseException):
                log.warning("A server did not stop cleanly: %r", outcome)
        await self.core.stop()
        log.info("Stopped")


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _local(host: str) -> str:
    """Where a client on this machine reaches a server bound to `host`."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _bind(host: str, port: int) -> socket.socket:
    """A bound TCP socket for uvicorn (so port 0 tells us the port actually bound)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise OSError(
            exc.errno, f"cannot bind REST to {_join(host, port)}: {exc.strerror}"
        ) from None
    sock.set_inheritable(True)
    return sock


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = DiscoveryServer(settings)
    try:
        await server.start()
        settle_heap()
        await stop.wait()
    finally:
        await server.stop()


def parse_args(argv: Sequence[str] | None, env: Mapping[str, str]) -> Settings:
    """Settings from the environment, overridden by flags (`--rest-port` and so on)."""
    parser = argparse.ArgumentParser(
        prog="service-discovery",
        description="Service discovery and health monitoring server (REST + gRPC).",
    )
    for field, variable in ENV_VARS.items():
        if field not in _NO_FLAG:
            parser.add_argument(
                "--" + field.replace("_", "-"), dest=field, metavar="VALUE", help=f"(${variable})"
            )
    overrides = vars(parser.parse_args(argv))
    return Settings.from_env(env, **overrides)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    # uvicorn's start and stop chatter repeats ours (under the confusing name "uvicorn.error").
    if logging.getLevelNamesMapping()[level] > logging.DEBUG:
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover  # uvloop is a dependency on every supported platform
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: exit 2 on bad settings, 1 when a port cannot be bound, else 0."""
    try:
        settings = parse_args(argv, os.environ)
    except ConfigError as exc:
        print(f"service-discovery: {exc}", file=sys.stderr)
        sys.exit(2)
    configure_logging(settings.log_level)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(serve(settings))
    except (OSError, RuntimeError) as exc:
        log.error("Cannot start: %s", exc)
        sys.exit(1)
