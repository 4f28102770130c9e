"""Protobuf messages as the REST API's JSON shapes, so that
`discoveryctl --json` prints what `curl` on the REST API would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from discovery.v1 import discovery_pb2 as pb

STATUS = {
    pb.HEALTH_STATUS_UNKNOWN: "unknown",
    pb.HEALTH_STATUS_HEALTHY: "healthy",
    pb.HEALTH_STATUS_UNHEALTHY: "unhealthy",
}
EVENT = {pb.EVENT_TYPE_PUT: "PUT", pb.EVENT_TYPE_DELETE: "DELETE"}

Record = dict[str, Any]


def iso8601(stamp: Timestamp) -> str:
    """A timestamp as the REST API writes it (`...T17:25:13.858182+00:00`)."""
    moment = datetime.fromtimestamp(stamp.seconds, UTC)
    return (moment + timedelta(microseconds=stamp.nanos // 1000)).isoformat()


def _optional_time(message: pb.Instance, field: str) -> str | None:
    if not message.HasField(field):  # type: ignore[arg-type]  # one of the Timestamp fields
        return None
    stamp: Timestamp = getattr(message, field)
    return iso8601(stamp)


def instance(message: pb.Instance) -> Record:
    """The REST instance record, key for key."""
    return {
        "service_name": message.service_name,
        "instance_id": message.instance_id,
        "host": message.host,
        "port": message.port,
        "health_endpoint": message.health_endpoint or None,
        "status": STATUS.get(message.status, "unknown"),
        "load_percentage": message.load_percentage,
        "critical_load": message.critical_load,
        "metadata": dict(message.metadata),
        "registered_at": iso8601(message.registered_at),
        "last_heartbeat": _optional_time(message, "last_heartbeat"),
        "last_health_check": _optional_time(message, "last_health_check"),
    }


def alert(message: pb.Alert) -> Record:
    """An entry of `GET /v1/discovery/alerts`."""
    return {
        "service_name": message.service_name,
        "instance_id": message.instance_id,
        "load_percentage": message.load_percentage,
        "threshold": message.threshold,
        "since": iso8601(message.since),
    }


def event(kind: str, revision: int, message: pb.Instance | None = None) -> Record:
    """An SSE event's `data:` object (section 6)."""
    data: Record = {"type": kind, "revision": revision}
    if message is not None:
        data["instance"] = instance(message)
    return data


def seconds(value: timedelta) -> int | float:
    """Whole seconds as an integer (`60`, not `60.0`), as the REST register answer has them."""
    total = value.total_seconds()
    return int(total) if total.is_integer() else total
