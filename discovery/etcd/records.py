"""How an instance is kept in etcd: one key per instance under the prefix, a JSON value.

`PREFIX/instances/SERVICE/INSTANCE_ID` holds the record; `PREFIX/replicas/ID` the live replicas
(under their leases). Names cannot hold `/` (see `discovery.core.validation`), so keys are exact.

Besides the instance's own fields a record carries what the replicas need to agree:
`seen_at` (wall time of the last registration or heartbeat any replica wrote through),
`severed` (downed by a broken KeepAlive stream, waiting for a sign of life), `told_load` (the
load at the last change a watcher saw), `visible` (whether this write changed something a
watcher sees) and `kept_by` (the replica holding a KeepAlive stream for it, whose death severs
it). The writer decides `visible` against the record itself, so every replica
publishes the same changes at the same revisions, whenever it joined.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from discovery.core.critical_load import CriticalLoadPolicy
from discovery.core.model import HealthStatus, Instance
from discovery.core.registry import LOAD_PUBLISH_STEP

Key = tuple[str, str]


@dataclass(slots=True)
class Record:
    """An instance as etcd holds it, with the key's revisions."""

    instance: Instance
    seen_at: float
    severed: bool
    told_load: float
    visible: bool
    kept_by: str | None = None
    create_revision: int = 0
    mod_revision: int = 0

    @property
    def key(self) -> Key:
        return self.instance.key


class Keys:
    """The keys of one prefix."""

    def __init__(self, prefix: str) -> None:
        self.root = (prefix + "/").encode()
        self.instances = (prefix + "/instances/").encode()
        self.replicas = (prefix + "/replicas/").encode()

    def instance(self, key: Key) -> bytes:
        return self.instances + f"{key[0]}/{key[1]}".encode()

    def replica(self, replica_id: str) -> bytes:
        return self.replicas + replica_id.encode()

    def instance_key(self, raw: bytes) -> Key | None:
        if not raw.startswith(self.instances):
            return None
        service, _, instance_id = raw[len(self.instances) :].decode().partition("/")
        return (service, instance_id)

    def replica_id(self, raw: bytes) -> str | None:
        return raw[len(self.replicas) :].decode() if raw.startswith(self.replicas) else None


def encode(record: Record) -> bytes:
    i = record.instance
    return json.dumps(
        {
            "service_name": i.service_name,
            "instance_id": i.instance_id,
            "host": i.host,
            "port": i.port,
            "health_endpoint": i.health_endpoint,
            "metadata": i.metadata,
            "registered_at": i.registered_at,
            "status": i.status.value,
            "load_percentage": i.load_percentage,
            "critical_load": i.critical_load,
            "critical_since": i.critical_since,
            "last_heartbeat": i.last_heartbeat,
            "last_health_check": i.last_health_check,
            "seen_at": record.seen_at,
            "severed": record.severed,
            "told_load": record.told_load,
            "visible": record.visible,
            "kept_by": record.kept_by,
        },
        separators=(",", ":"),
    ).encode()


def decode(value: bytes, create_revision: int, mod_revision: int) -> Record:
    """`ValueError` when the value is not a record (written by something else)."""
    try:
        raw: dict[str, Any] = json.loads(value)
        instance = Instance(
            service_name=str(raw["service_name"]),
            instance_id=str(raw["instance_id"]),
            host=str(raw["host"]),
            port=int(raw["port"]),
            health_endpoint=raw["health_endpoint"],
            metadata={str(k): str(v) for k, v in raw["metadata"].items()},
            registered_at=float(raw["registered_at"]),
            status=HealthStatus(raw["status"]),
            load_percentage=float(raw["load_percentage"]),
            critical_load=bool(raw["critical_load"]),
            critical_since=raw["critical_since"],
            last_heartbeat=raw["last_heartbeat"],
            last_health_check=raw["last_health_check"],
            revision=mod_revision,
        )
        return Record(
            instance,
            seen_at=float(raw["seen_at"]),
            severed=bool(raw["severed"]),
            told_load=float(raw["told_load"]),
            visible=bool(raw["visible"]),
            kept_by=raw.get("kept_by"),
            create_revision=create_revision,
            mod_revision=mod_revision,
        )
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not an instance record: {exc!r}") from None


def registration(existing: Record | None, record: Instance, now: float) -> Record:
    """The record after a registration: as the single-process registry would keep it."""
    if existing is None:
        instance = record.snapshot()
        instance.status = HealthStatus.HEALTHY if record.heartbeat_only else HealthStatus.UNKNOWN
        return Record(instance, seen_at=now, severed=False, told_load=0.0, visible=True)
    old = existing.instance
    instance = old.snapshot()
    instance.host, instance.port = record.host, record.port
    instance.health_endpoint, instance.metadata = record.health_endpoint, record.metadata
    moved = old.address != record.address
    retarget = moved or old.health_endpoint != record.health_endpoint
    if moved:
        # Another address is another process: nothing known of the old one carries over.
        instance.status, instance.load_percentage = HealthStatus.UNKNOWN, 0.0
        instance.critical_load, instance.critical_since = False, None
    if instance.heartbeat_only:
        instance.status = HealthStatus.HEALTHY
    changed = retarget or old.metadata != record.metadata or instance.status is not old.status
    told = instance.load_percentage if changed else existing.told_load
    return Record(
        instance, now, severed=False, told_load=told, visible=changed, kept_by=existing.kept_by
    )


def liveness(
    current: Record,
    local: Instance,
    base: Instance,
    seen_at: float | None,
    severed: bool,
    kept_by: str | None,
    policy: CriticalLoadPolicy,
    now: float,
) -> Record | None:
    """`current` with what this replica decided since it last applied `base` (the fields where
    `local` differs from `base`) and its newest sign of life; None when nothing changes."""
    instance = current.instance.snapshot()
    for field in ("status", "load_percentage", "last_health_check"):
        if getattr(local, field) != getattr(base, field):
            setattr(instance, field, getattr(local, field))
    if local.last_heartbeat is not None and (
        instance.last_heartbeat is None or local.last_heartbeat > instance.last_heartbeat
    ):
        instance.last_heartbeat = local.last_heartbeat
    critical = policy.is_critical(
        current.instance.critical_load, instance.load_percentage, instance.healthy
    )
    if critical != instance.critical_load:
        instance.critical_load = critical
        instance.critical_since = now if critical else None
    seen = max(current.seen_at, seen_at or 0.0)
    old = current.instance
    visible = (
        instance.status is not old.status
        or instance.critical_load != old.critical_load
        or abs(instance.load_percentage - current.told_load) >= LOAD_PUBLISH_STEP
    )
    told = instance.load_percentage if visible else current.told_load
    if (
        not visible
        and severed == current.severed
        and kept_by == current.kept_by
        and seen == current.seen_at
        and instance.last_heartbeat == old.last_heartbeat
        and instance.load_percentage == old.load_percentage
        and instance.last_health_check == old.last_health_check
    ):
        return None
    return Record(instance, seen, severed, told, visible, kept_by, current.create_revision)


def urgent(current: Record, proposed: Record) -> bool:
    """Whether `proposed` must be written at once (other replicas must see it within 1 s)."""
    return (
        proposed.visible
        or proposed.severed != current.severed
        or proposed.kept_by != current.kept_by
    )
