"""The composition root: one core, both servers on one event loop, and their bounded stop.

`DiscoveryServer(settings)` builds everything and nothing runs until `start()`; `serve()` runs one
until SIGTERM or SIGINT. `discovery.main` builds the settings at the edge and calls `serve()`;
`discovery.testing.run_server` starts a `DiscoveryServer` in-process for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import socket
from typing import Any

import grpc
import uvicorn

from discovery.core.clock import Clock
from discovery.core.facade import DiscoveryCore
from discovery.core.settings import Settings
from discovery.core.store.base import Store
from discovery.etcd.store import EtcdStore
from discovery.heap import pause_collector, settle_heap
from discovery.http_guard import ConnectionGuard, guarded_protocol
from discovery.limits import MemoryTrimmer, connection_cap, raise_descriptor_limit
from discovery.ratelimit import quiet_foreign_loggers
from discovery.rpc.health import HealthService
from discovery.rpc.servicer import build_server
from discovery.tls import load_server_tls
from gateway_rest.app import create_app

log = logging.getLogger("discovery")
# The bound addresses are announced whatever LOG_LEVEL says: with port 0, that line is the only
# way to learn them.
announce = logging.getLogger("discovery.listening")
announce.setLevel(logging.INFO)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the composition root owns SIGTERM and SIGINT,
    because uvicorn would re-raise a captured signal after serving and kill the process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


class DiscoveryServer:
    """The REST facade and the gRPC API over one `DiscoveryCore`, on the running event loop."""

    def __init__(
        self, settings: Settings, clock: Clock | None = None, store: Store | None = None
    ) -> None:
        self.settings = settings
        self.core = DiscoveryCore(settings, clock, store or _store(settings))
        self.rest_port = 0
        self.grpc_port = 0
        self._grpc: grpc.aio.Server | None = None
        self._health: HealthService | None = None
        self._rest: _Uvicorn | None = None
        self._rest_task: asyncio.Task[None] | None = None
        self._trimmer = MemoryTrimmer(settings.memory_trim_interval)
        self._stopped = False
        self._core_started = False
        self.connection_cap = 0

    @property
    def rest_url(self) -> str:
        """Base URL of the REST facade, for clients on this machine."""
        scheme = "https" if self.settings.tls else "http"
        return f"{scheme}://{_join(_local(self.settings.host), self.rest_port)}"

    @property
    def grpc_target(self) -> str:
        """gRPC target of the API, for clients on this machine."""
        return _join(_local(self.settings.host), self.grpc_port)

    async def start(self) -> None:
        """Bind both ports, start serving and the background work, log the bound addresses."""
        settings = self.settings
        tls = load_server_tls(settings)  # a bad file stops start-up before anything runs
        quiet_foreign_loggers(settings.client_error_log_interval)
        descriptors = raise_descriptor_limit()
        cap = connection_cap(
            descriptors, settings.max_connections, settings.health_check_max_concurrency
        )
        self.connection_cap = cap
        await self.core.start()
        self._core_started = True
        # Logged once the store opened: a store that cannot start the server says so alone.
        log.info("Descriptor limit %d: at most %d connections on each port", descriptors, cap)
        self._grpc, self._health = build_server(self.core, options=grpc_options(settings, cap))
        address = _join(settings.host, settings.grpc_port)
        if tls is None:
            self.grpc_port = self._grpc.add_insecure_port(address)
        else:
            self.grpc_port = self._grpc.add_secure_port(address, tls.grpc_credentials())
        await self._grpc.start()
        sock = _bind(settings.host, settings.rest_port)
        self.rest_port = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(self.core),
            lifespan="off",
            log_config=None,
            access_log=False,
            http=guarded_protocol(
                ConnectionGuard(cap, settings.header_timeout, settings.client_error_log_interval)
            ),
            # uvicorn types it as int; any number of seconds works (it goes to call_later).
            timeout_keep_alive=settings.idle_timeout,  # type: ignore[arg-type]
            ws="none",
            timeout_graceful_shutdown=max(1, math.ceil(settings.shutdown_grace)),
            **(tls.uvicorn_options() if tls is not None else {}),
        )
        self._rest = _Uvicorn(config)
        self._rest_task = asyncio.create_task(self._rest.serve(sockets=[sock]), name="rest")
        while not self._rest.started:
            if self._rest_task.done():
                await self._rest_task
                raise RuntimeError("the REST server stopped during start-up")
            await asyncio.sleep(0.005)
        self.core.serving()
        self._trimmer.start()
        announce.info("REST listening on %s", _join(settings.host, self.rest_port))
        announce.info("gRPC listening on %s", _join(settings.host, self.grpc_port))
        if tls is not None:
            log.info(
                "TLS on both ports%s",
                ", client certificates required" if tls.client_ca is not None else "",
            )
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
        if not self._core_started:
            return  # the store could not be opened: nothing runs, nothing to stop
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
        await self._trimmer.stop()
        log.info("Stopped")


def _store(settings: Settings) -> Store | None:
    """The store `SERVICE_DISCOVERY_STORE` names (None: the core's default)."""
    if settings.etcd is not None:
        return EtcdStore(settings)
    return None


def grpc_options(settings: Settings, cap: int) -> list[tuple[str, int]]:
    """The gRPC server's connection hygiene (README, "Connections").

    A silent TCP connection is closed when its HTTP/2 handshake is not done within the header
    timeout; a connection with no call open for `grpc_max_connection_idle` is closed; the server
    pings every connection after `grpc_keepalive_time` of silence and closes it when the ping
    goes unanswered for `grpc_keepalive_timeout` (a dead peer, whose KeepAlive streams then
    count as broken). Age-based GOAWAY is off by default: with it, a connection stops taking
    new calls at that age and its open streams (Watch, KeepAlive) run on until they end, or
    until the grace when one is set, after which clients reconnect (Watch resumes from its last
    revision; a KeepAlive stream cut this way is a break).
    """
    options = [
        ("grpc.max_allowed_incoming_connections", cap),
        ("grpc.server_handshake_timeout_ms", _ms(settings.header_timeout)),
        ("grpc.keepalive_time_ms", _ms(settings.grpc_keepalive_time)),
        ("grpc.keepalive_timeout_ms", _ms(settings.grpc_keepalive_timeout)),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.max_ping_strikes", 2),
        # What clients send is small (registrations, heartbeats, watch requests): growing the
        # receive window by bandwidth-delay probing buys nothing, and its pings cost every
        # fresh connection frames and wake-ups. What the server sends (snapshots) is paced by
        # the client's window, which the client's own probing still grows.
        ("grpc.http2.bdp_probe", 0),
    ]
    if settings.grpc_max_connection_idle > 0:
        options.append(("grpc.max_connection_idle_ms", _ms(settings.grpc_max_connection_idle)))
    if settings.grpc_max_connection_age > 0:
        options.append(("grpc.max_connection_age_ms", _ms(settings.grpc_max_connection_age)))
        if settings.grpc_max_connection_age_grace > 0:
            grace = _ms(settings.grpc_max_connection_age_grace)
            options.append(("grpc.max_connection_age_grace_ms", grace))
    return options


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


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
    pause_collector()
    server = DiscoveryServer(settings)
    try:
        await server.start()
        settle_heap()
        await stop.wait()
    finally:
        await server.stop()
