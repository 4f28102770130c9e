"""Conversions between the core's plain data and the discovery.v1 protobuf messages."""

from __future__ import annotations

import math

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from discovery.core.model import Alert, EventType, HealthStatus, Instance
from discovery.v1 import discovery_pb2 as pb

STATUS_TO_PB = {
    HealthStatus.UNKNOWN: pb.HEALTH_STATUS_UNKNOWN,
    HealthStatus.HEALTHY: pb.HEALTH_STATUS_HEALTHY,
    HealthStatus.UNHEALTHY: pb.HEALTH_STATUS_UNHEALTHY,
}
EVENT_TO_PB = {EventType.PUT: pb.EVENT_TYPE_PUT, EventType.DELETE: pb.EVENT_TYPE_DELETE}


def _split(seconds: float) -> tuple[int, int]:
    # Rounded to microseconds exactly as datetime.fromtimestamp does, so a time reads the same
    # over gRPC as in the REST record's ISO string.
    fraction, whole = math.modf(seconds)
    micros = round(fraction * 1e6)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    elif micros < 0:
        whole, micros = whole - 1, micros + 1_000_000
    return int(whole), micros * 1000


def timestamp(seconds: float) -> Timestamp:
    whole, nanos = _split(seconds)
    return Timestamp(seconds=whole, nanos=nanos)


def duration(seconds: float) -> Duration:
    whole, nanos = _split(seconds)
    return Duration(seconds=whole, nanos=nanos)


def instance_to_pb(instance: Instance) -> pb.Instance:
    message = pb.Instance()
    fill_instance(message, instance)
    return message


def fill_instance(message: pb.Instance, instance: Instance, with_heartbeat: bool = True) -> None:
    """Write `instance` into an empty message in place (cheaper than building one and copying
    it into a response: every heartbeat answer carries an instance)."""
    message.service_name = instance.service_name
    message.instance_id = instance.instance_id
    message.host = instance.host
    message.port = instance.port
    if instance.health_endpoint is not None:
        message.health_endpoint = instance.health_endpoint
    message.status = STATUS_TO_PB[instance.status]
    message.load_percentage = instance.load_percentage
    message.critical_load = instance.critical_load
    if instance.metadata:
        message.metadata.update(instance.metadata)
    _set_time(message.registered_at, instance.registered_at)
    if with_heartbeat and instance.last_heartbeat is not None:
        _set_time(message.last_heartbeat, instance.last_heartbeat)
    if instance.last_health_check is not None:
        _set_time(message.last_health_check, instance.last_health_check)


class InstanceMessages:
    """Encoded instances for heartbeat answers, built once per instance state.

    A heartbeat changes only `last_heartbeat`; everything else in the message changes with the
    instance's revision, its load or its last health check. Copying a cached message and setting
    the one timestamp costs less than half of building it field by field.
    """

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._entries: dict[tuple[str, str], tuple[tuple[int, float, float | None], pb.Instance]]
        self._entries = {}

    def fill(self, message: pb.Instance, instance: Instance) -> None:
        """Write `instance` into an empty message in place."""
        key = (instance.service_name, instance.instance_id)
        state = (instance.revision, instance.load_percentage, instance.last_health_check)
        entry = self._entries.get(key)
        if entry is None or entry[0] != state:
            base = pb.Instance()
            fill_instance(base, instance, with_heartbeat=False)
            if len(self._entries) >= self._size:
                del self._entries[next(iter(self._entries))]
            self._entries[key] = entry = (state, base)
        message.CopyFrom(entry[1])
        if instance.last_heartbeat is not None:
            _set_time(message.last_heartbeat, instance.last_heartbeat)


def _set_time(field: Timestamp, seconds: float) -> None:
    field.seconds, field.nanos = _split(seconds)


def alert_to_pb(alert: Alert) -> pb.Alert:
    return pb.Alert(
        service_name=alert.service_name,
        instance_id=alert.instance_id,
        load_percentage=alert.load_percentage,
        threshold=alert.threshold,
        since=timestamp(alert.since),
    )
