"""Following a shared store (etcd): the registry's state loaded from the store and kept in step
with every record any replica writes there, at the store's revisions.

Changes decided on this replica are not applied here directly: the registry hands them to its
`Follower` (`discovery.etcd`), which writes them, and they come back through `apply` and
`apply_delete` like everyone else's.
"""

from __future__ import annotations

from discovery.core.interning import MetadataPool, name
from discovery.core.metrics import TTL
from discovery.core.model import EventType, Instance
from discovery.core.read_model import ReadModel


class Following(ReadModel):
    """The registry's side of a shared store: records in, at the store's revisions."""

    def is_severed(self, instance: Instance) -> bool:
        """Downed by a broken KeepAlive stream and not heard from since."""
        return instance in self._severed

    def set_severed(self, instance: Instance, severed: bool) -> None:
        """Mark (or clear) `instance` as downed by a broken stream, publishing nothing."""
        if severed:
            self._severed.add(instance)
        else:
            self._severed.discard(instance)

    def expired_by_owner(self) -> None:
        """This replica expired a registration it owns through the shared store (its removal
        arrives like every change): counted here, so the cluster counts each expiry once."""
        self._expirations[TTL] += 1

    def load(self, records: list[tuple[Instance, bool]], revision: int) -> None:
        """Start from a shared store's state at `revision`: instances in registration order,
        each with whether it is severed. Nothing is published (no watcher exists yet)."""
        self._revision = revision
        for record, severed in records:
            instance = self._insert(record)
            instance.published = instance.snapshot()
            if severed:
                self._severed.add(instance)
            if not instance.heartbeat_only:
                self.probes.probe_soon(instance)

    def apply(self, record: Instance, revision: int, visible: bool, severed: bool) -> None:
        """A record written to the shared store (by any replica), at the store's `revision`.

        Published to watchers when the writer marked it `visible`; otherwise only readers see
        the new times and load.
        """
        existing = self.get(record.service_name, record.instance_id)
        if existing is None:
            instance = self._insert(record)
            healthy_before, retarget, was_severed = False, True, False
        else:
            instance, healthy_before = existing, existing.healthy
            was_severed = instance in self._severed
            retarget = (instance.address, instance.health_endpoint) != (
                record.address,
                record.health_endpoint,
            )
            _copy_into(instance, record, self._metadata)
        self._touch(instance.service_name)
        if severed:
            self._severed.add(instance)
        else:
            self._severed.discard(instance)
        if instance.heartbeat_only:
            self.probes.drop(instance.key)
        elif retarget or (was_severed and not severed):
            self.probes.probe_soon(instance)
        if visible or existing is None:
            self._emit(instance, healthy_before, EventType.PUT, revision)

    def apply_delete(self, service_name: str, instance_id: str, revision: int) -> None:
        """An instance removed from the shared store (unregistered or expired) at `revision`."""
        instance = self.get(service_name, instance_id)
        if instance is not None:
            self._delete(instance, revision)


def _copy_into(instance: Instance, record: Instance, pool: MetadataPool) -> None:
    """Take every field of `record` except the newest sign of life, which may be newer here."""
    instance.host, instance.port = name(record.host), record.port
    instance.health_endpoint = record.health_endpoint
    instance.metadata = pool.share(record.metadata)
    instance.registered_at = record.registered_at
    instance.status = record.status
    instance.load_percentage = record.load_percentage
    instance.critical_load = record.critical_load
    instance.critical_since = record.critical_since
    instance.last_health_check = record.last_health_check
    if record.last_heartbeat is not None and (
        instance.last_heartbeat is None or record.last_heartbeat > instance.last_heartbeat
    ):
        instance.last_heartbeat = record.last_heartbeat
