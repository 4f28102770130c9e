"""Plain data of the registry: instances, their health, changes and alerts. No protocol types."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class HealthStatus(enum.Enum):
    """An instance's health as the server sees it; `value` is the REST spelling."""

    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


class EventType(enum.Enum):
    """The kind of a registry change as a watcher sees it."""

    PUT = "PUT"
    DELETE = "DELETE"


DEFAULT_HEALTH_ENDPOINT = "/health"


@dataclass(frozen=True, slots=True)
class Registration:
    """A validated request to register an instance (see `discovery.core.validation`)."""

    service_name: str
    instance_id: str
    host: str
    port: int
    health_endpoint: str | None = DEFAULT_HEALTH_ENDPOINT
    metadata: dict[str, str] | None = None


@dataclass(slots=True, eq=False)
class Instance:
    """One registered instance.

    The registry owns and mutates these in place; everything it hands to watchers is a
    `snapshot()`, and `published` is the last one it handed out. Times are UNIX seconds (wall
    clock), `None` until they first happen. `revision` is the registry revision of the last
    change a watcher could see. Instances compare and hash by identity.
    """

    service_name: str
    instance_id: str
    host: str
    port: int
    health_endpoint: str | None
    metadata: dict[str, str]
    registered_at: float
    status: HealthStatus = HealthStatus.UNKNOWN
    load_percentage: float = 0.0
    critical_load: bool = False
    critical_since: float | None = None
    last_heartbeat: float | None = None
    last_health_check: float | None = None
    revision: int = 0
    published: Instance | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.service_name, self.instance_id)

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def heartbeat_only(self) -> bool:
        """No active probe: the instance lives on heartbeats alone."""
        return self.health_endpoint is None

    @property
    def healthy(self) -> bool:
        return self.status is HealthStatus.HEALTHY

    def snapshot(self) -> Instance:
        """An independent copy (metadata is never mutated in place, so it is shared)."""
        return Instance(
            self.service_name,
            self.instance_id,
            self.host,
            self.port,
            self.health_endpoint,
            self.metadata,
            self.registered_at,
            self.status,
            self.load_percentage,
            self.critical_load,
            self.critical_since,
            self.last_heartbeat,
            self.last_health_check,
            self.revision,
        )


@dataclass(frozen=True, slots=True)
class Change:
    """One change a watcher can see: the instance as it is after it, at `revision`.

    `healthy_before` says whether the instance was in the healthy set before the change, so a
    healthy-only watcher can tell an entry (PUT), an exit (DELETE) and a change outside its view.
    """

    type: EventType
    instance: Instance
    revision: int
    healthy_before: bool

    @property
    def healthy_after(self) -> bool:
        return self.type is EventType.PUT and self.instance.healthy


@dataclass(frozen=True, slots=True)
class Alert:
    """An instance at critical load."""

    service_name: str
    instance_id: str
    load_percentage: float
    threshold: float
    since: float
