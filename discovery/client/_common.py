"""What the client SDK's pieces share: the instance type, backoff, channels and credentials."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import grpc

from discovery.v1 import discovery_pb2 as pb

EventKind = Literal["PUT", "DELETE"]

_STATUS = {
    pb.HEALTH_STATUS_UNKNOWN: "unknown",
    pb.HEALTH_STATUS_HEALTHY: "healthy",
    pb.HEALTH_STATUS_UNHEALTHY: "unhealthy",
}

#: Channel options: reconnect quickly after a server restart (gRPC's default backoff grows to
#: two minutes), and ping an idle connection so a dead server is noticed.
CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]


class NoInstanceAvailable(LookupError):
    """`pick()` found no healthy instance of the service."""

    def __init__(self, service_name: str) -> None:
        super().__init__(f"no healthy instance of {service_name!r}")
        self.service_name = service_name


@dataclass(frozen=True, slots=True)
class ServiceInstance:
    """An instance as the client sees it (the fields of the `Instance` message)."""

    service_name: str
    instance_id: str
    host: str
    port: int
    status: str = "unknown"
    load_percentage: float = 0.0
    critical_load: bool = False
    metadata: dict[str, str] = field(default_factory=dict, hash=False)
    health_endpoint: str | None = None
    registered_at: datetime | None = None
    revision: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return (self.service_name, self.instance_id)

    @property
    def address(self) -> str:
        """`host:port`, with an IPv6 host in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def healthy(self) -> bool:
        return self.status == "healthy"

    @classmethod
    def from_pb(cls, message: pb.Instance, revision: int = 0) -> ServiceInstance:
        registered = None
        if message.HasField("registered_at"):
            registered = message.registered_at.ToDatetime(tzinfo=UTC)
        return cls(
            service_name=message.service_name,
            instance_id=message.instance_id,
            host=message.host,
            port=message.port,
            status=_STATUS.get(message.status, "unknown"),
            load_percentage=message.load_percentage,
            critical_load=message.critical_load,
            metadata=dict(message.metadata),
            health_endpoint=message.health_endpoint or None,
            registered_at=registered,
            revision=revision,
        )


@dataclass(frozen=True, slots=True)
class InstanceChange:
    """A change of the local view: an instance put (added or changed) or deleted."""

    type: EventKind
    instance: ServiceInstance
    revision: int


class Backoff:
    """Jittered exponential backoff: each delay is 50..100 % of `initial * factor**attempt`,
    capped at `maximum`; `reset()` after a success starts over."""

    def __init__(
        self,
        initial: float = 0.1,
        maximum: float = 5.0,
        factor: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        """The delay before the next attempt."""
        ceiling = min(self.maximum, self.initial * self.factor**self.attempt)
        if ceiling < self.maximum:  # past the cap the exponent stops growing (no overflow)
            self.attempt += 1
        return ceiling * (0.5 + self._rng.random() / 2)

    def reset(self) -> None:
        self.attempt = 0


async def stop_task(task: asyncio.Task[None], wait: float) -> BaseException | None:
    """Give `task` up to `wait` seconds to finish, then cancel it; returns what it raised.

    Built on asyncio.wait, which neither raises the task's error nor swallows a cancellation
    of the caller.
    """
    await asyncio.wait({task}, timeout=wait)
    if not task.done():
        task.cancel()
        await asyncio.wait({task})
    return None if task.cancelled() else task.exception()


def auth_metadata(secret: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata writes need when the server has a secret."""
    return (("authorization", f"Bearer {secret}"),) if secret else ()


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """PEM files for a TLS channel: the CA that signed the server's certificate (None: the
    system's roots) and, for a server that requires client certificates, this client's
    certificate and key."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @classmethod
    def of(
        cls, ca_file: str | None, cert_file: str | None, key_file: str | None, tls: bool
    ) -> TLSFiles | None:
        """The files given to a client's constructor; None for a plain channel."""
        if (cert_file is None) != (key_file is None):
            raise ValueError("cert_file and key_file go together")
        if not tls and ca_file is None and cert_file is None:
            return None
        return cls(ca_file, cert_file, key_file)

    def credentials(self) -> grpc.ChannelCredentials:
        """gRPC channel credentials from the files (read now: OSError when one is missing)."""
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file),
            private_key=_read(self.key_file),
            certificate_chain=_read(self.cert_file),
        )


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as file:
        return file.read()


def open_channel(target: str, tls: TLSFiles | None = None) -> grpc.aio.Channel:
    """A channel to `target` with the SDK's reconnect and keepalive options: TLS with `tls`,
    plain without."""
    if tls is None:
        return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
    return grpc.aio.secure_channel(target, tls.credentials(), options=CHANNEL_OPTIONS)
