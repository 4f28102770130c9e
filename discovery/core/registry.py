"""The in-memory read model: instances, the revision counter, TTL and liveness.

Every change a watcher can see goes through `_publish`, which raises the revision by one and hands
the change to the listeners (the watch hub, which keeps recent changes for resumes, and the alert
book); the health monitor learns what to probe through `probes`. The registry is used from one
event loop only and never awaits, so each operation is atomic.

Durability: registrations and unregistrations reach the store before they get here (the facade
writes them first); the registry tells its store about every liveness change (`touch`, cheap)
and every expiry (`forget`), and takes in what a store held at start-up with `restore`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Collection, Iterator
from typing import Protocol

from discovery.core.clock import Clock
from discovery.core.critical_load import CriticalLoadPolicy
from discovery.core.errors import InstanceNotFound, LimitExceeded, ServiceNotFound
from discovery.core.interning import Metadata, MetadataPool, name
from discovery.core.liveness import Deadlines
from discovery.core.metrics import HEARTBEAT_GRACE, STREAM_BROKEN, TTL, Metrics
from discovery.core.model import Change, EventType, HealthStatus, Instance, Registration
from discovery.core.settings import Settings
from discovery.core.store.base import Store
from discovery.core.store.memory import MemoryStore

log = logging.getLogger("discovery.registry")

#: Load drifts smaller than this since the last published load raise no revision.
LOAD_PUBLISH_STEP = 0.05

Key = tuple[str, str]
Listener = Callable[[Change], None]


class ProbeTargets(Protocol):
    """What the registry tells the health monitor: which instances to probe, and when."""

    def probe_soon(self, instance: Instance) -> None:
        """Probe `instance` now (new, moved, or back after a broken stream)."""

    def drop(self, key: Key) -> None:
        """Stop probing the instance `key` (gone, or heartbeat-only now)."""


class Follower(Protocol):
    """A shared store the registry follows (etcd): changes decided here are written there first,
    and come back through `apply` with the store's revision."""

    def propose(self, instance: Instance) -> None:
        """A watcher-visible change of `instance` was decided here: write it at once (what
        only readers see reaches the store through `Store.touch`)."""


class _NoProbes:
    def probe_soon(self, instance: Instance) -> None:
        pass

    def drop(self, key: Key) -> None:
        pass


class Registry:
    """Registered instances by service, in registration order."""

    def __init__(self, settings: Settings, clock: Clock, metrics: Metrics | None = None) -> None:
        self._settings = settings
        self._clock = clock
        self._expirations = (metrics or Metrics()).expirations
        self._policy = CriticalLoadPolicy.from_settings(settings)
        self._services: dict[str, dict[str, Instance]] = {}
        self._count = 0
        # A counter started from the clock never goes back across restarts.
        self._revision = int(clock.time() * 1_000_000)
        self._metadata = MetadataPool()
        # Every instance by its last registration or heartbeat (for the TTL) ...
        self._seen = Deadlines()
        # ... and the healthy heartbeat-only ones (for their heartbeat grace).
        self._beating = Deadlines()
        # Instances downed by a broken KeepAlive stream, waiting for a sign of life.
        self._severed: set[Instance] = set()
        # Versions for caches of encoded answers: they move on every change, timestamps
        # included. Drawn from one counter, so a service that goes and comes back never
        # repeats a version it had.
        self._touches = itertools.count(1)
        self._versions: dict[str, int] = {}
        self._version = 0
        self._listeners: list[Listener] = []
        self.probes: ProbeTargets = _NoProbes()
        self._store: Store = MemoryStore()
        # Bound once: it runs on every heartbeat.
        self._touch_store: Callable[[Instance], None] = self._store.touch
        # Instances with a registration or unregistration in flight (between the store write and
        # its application here): the TTL sweep spares them, so an expiry cannot slip between.
        self.writing: Collection[Key] = frozenset()
        self.follower: Follower | None = None

    # -- reading ----------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        """The revision of the last change."""
        return self._revision

    def __len__(self) -> int:
        return self._count

    def size_of(self, service_name: str) -> int:
        """How many instances the service has."""
        return len(self._services.get(service_name, ()))

    def get(self, service_name: str, instance_id: str) -> Instance | None:
        instances = self._services.get(service_name)
        return None if instances is None else instances.get(instance_id)

    def require(self, service_name: str, instance_id: str) -> Instance:
        instance = self.get(service_name, instance_id)
        if instance is None:
            raise InstanceNotFound(service_name, instance_id)
        return instance

    def services(self) -> dict[str, list[Instance]]:
        """Every service with its instances, both in registration order."""
        return {name: list(instances.values()) for name, instances in self._services.items()}

    def instances(self, service_name: str) -> list[Instance]:
        """The instances of one service; `ServiceNotFound` when it has none."""
        instances = self._services.get(service_name)
        if not instances:
            raise ServiceNotFound(service_name)
        return list(instances.values())

    def healthy(self, service_name: str) -> list[Instance]:
        """The healthy instances of one service (empty when the service is unknown)."""
        instances = self._services.get(service_name)
        if not instances:
            return []
        return [i for i in instances.values() if i.status is HealthStatus.HEALTHY]

    def all_instances(self) -> Iterator[Instance]:
        for instances in self._services.values():
            yield from instances.values()

    def service_version(self, service_name: str) -> int:
        """Changes whenever anything about the service changes, timestamps included; 0 while
        the service has no instances."""
        return self._versions.get(service_name, 0)

    @property
    def version(self) -> int:
        """Changes whenever anything in the registry changes, timestamps included."""
        return self._version

    # -- listening --------------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` with every change; returns the function that stops it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    # -- writing ----------------------------------------------------------------------------

    def attach(self, store: Store) -> None:
        """Tell `store` about every liveness change and expiry from now on."""
        self._store = store
        self._touch_store = store.touch

    def check_limits(self, service_name: str, pending: int = 0, pending_here: int = 0) -> None:
        """`LimitExceeded` when one more instance of `service_name` would pass an instance
        limit, counting `pending` new instances not applied yet (`pending_here` of them in
        that service)."""
        self._check_limits(service_name, pending, pending_here)

    def record_of(self, registration: Registration) -> Instance:
        """The instance as `register` would keep it (for the store to write first): its
        registration fields, and the status a new instance starts with."""
        existing = self.get(registration.service_name, registration.instance_id)
        heartbeat_only = registration.health_endpoint is None
        return Instance(
            service_name=registration.service_name,
            instance_id=registration.instance_id,
            host=registration.host,
            port=registration.port,
            health_endpoint=registration.health_endpoint,
            metadata=dict(registration.metadata or {}),
            registered_at=self._clock.time() if existing is None else existing.registered_at,
            status=HealthStatus.HEALTHY if heartbeat_only else HealthStatus.UNKNOWN,
        )

    def restore(self, instances: list[Instance], revision: int) -> None:
        """Take in what a store held, before serving: no change is published (watchers and
        alerts read the restored state, see `WatchHub.reload` and `AlertBook.restore`).

        Each instance keeps its last known status and critical load; its TTL (and heartbeat
        grace) start over now, and probed instances are probed at once. Every revision
        handed out from now on is greater than `revision`.
        """
        self._revision = max(self._revision, revision)
        services = self._services
        # Restored instances of a fleet mostly hold the same metadata object: share it once.
        shared: dict[int, Metadata] = {}
        for instance in instances:
            instance.service_name = name(instance.service_name)
            instance.host = name(instance.host)
            metadata = shared.get(id(instance.metadata))
            if metadata is None:
                metadata = shared[id(instance.metadata)] = self._metadata.share(instance.metadata)
            instance.metadata = metadata
            instance.revision = min(instance.revision, self._revision)
            instance.published = instance.snapshot()
            services.setdefault(instance.service_name, {})[instance.instance_id] = instance
            if not instance.heartbeat_only:
                self.probes.probe_soon(instance)
        self._count += len(instances)
        now = self._clock.monotonic()
        self._seen.add_all(instances, now)
        self._beating.add_all((i for i in instances if i.heartbeat_only and i.healthy), now)
        for service_name in services:
            self._touch(service_name)

    def restart_deadlines(self) -> None:
        """Every instance's TTL and heartbeat grace start over now (the server serves from
        now on, after a restart)."""
        now = self._clock.monotonic()
        self._seen.restart(now)
        self._beating.restart(now)

    def register(
        self, registration: Registration, registered_at: float | None = None
    ) -> tuple[Instance, bool]:
        """Add or update an instance; returns it and whether it is new. A new instance is
        registered at `registered_at` (default: now)."""
        existing = self.get(registration.service_name, registration.instance_id)
        if existing is not None:
            return self._reregister(existing, registration), False
        self._check_limits(registration.service_name)
        instance = Instance(
            service_name=name(registration.service_name),
            instance_id=registration.instance_id,
            host=name(registration.host),
            port=registration.port,
            health_endpoint=registration.health_endpoint,
            metadata=self._metadata.share(registration.metadata),
            registered_at=self._clock.time() if registered_at is None else registered_at,
        )
        self._services.setdefault(instance.service_name, {})[instance.instance_id] = instance
        self._count += 1
        heard = self._mark_seen(instance)
        self._revive(instance, heard)
        self._publish(instance, healthy_before=False)
        if not instance.heartbeat_only:
            self.probes.probe_soon(instance)
        return instance, True

    def heartbeat(self, service_name: str, instance_id: str, load: float | None = None) -> Instance:
        """Record a heartbeat (and a pushed load); `InstanceNotFound` when unknown."""
        instance = self.require(service_name, instance_id)
        status_before = instance.status
        instance.last_heartbeat = self._clock.time()
        heard = self._mark_seen(instance)
        if load is not None:
            instance.load_percentage = load
        self._revive(instance, heard)
        if load is not None or instance.status is not status_before:
            # Otherwise nothing a watcher or an alert could see has changed (the common case).
            self._settle(instance, status_before is HealthStatus.HEALTHY)
        else:
            self._touch_store(instance)
        return instance

    def unregister(self, service_name: str, instance_id: str) -> Instance:
        """Remove an instance; `InstanceNotFound` when unknown."""
        instance = self.require(service_name, instance_id)
        self._remove(instance)
        return instance

    def record_health(
        self, instance: Instance, status: HealthStatus | None, load: float | None
    ) -> None:
        """Apply a probe outcome: the check time, and a new status and load where given.

        An instance downed by a broken stream stays down until a heartbeat or registration
        shows its process is back; only the probe after that can make it healthy again.
        """
        healthy_before = instance.healthy
        instance.last_health_check = self._clock.time()
        if load is not None:
            instance.load_percentage = load
        if status is not None and not (
            status is HealthStatus.HEALTHY and instance in self._severed
        ):
            instance.status = status
        self._settle(instance, healthy_before)

    def sever(self, keys: list[Key]) -> None:
        """A stream that kept these instances alive broke: they turn unhealthy at once."""
        for key in keys:
            instance = self.get(*key)
            if instance is None:
                continue
            self._severed.add(instance)
            self._beating.discard(instance)
            self._expirations[STREAM_BROKEN] += 1
            healthy_before = instance.healthy
            instance.status = HealthStatus.UNHEALTHY
            self._settle(instance, healthy_before)

    def sweep(self) -> float:
        """Expire stale registrations and stale heartbeat-only instances.

        Returns the monotonic time of the next deadline (or now + TTL when there is none).
        """
        now = self._clock.monotonic()
        ttl = self._settings.registration_ttl
        spared = []
        for instance in self._seen.silent_since(now - ttl):
            if instance.key in self.writing:
                spared.append(instance)
                continue
            log.info(
                "Registration of %s:%s expired (no heartbeat for %ss)",
                instance.service_name,
                instance.instance_id,
                ttl,
            )
            self._remove(instance)
            self._expirations[TTL] += 1
            self._store.forget(instance)
        for instance in spared:
            # A registration in flight is a sign of life; an unregistration removes it anyway.
            self._seen.touch(instance, now)
        for instance in self._beating.silent_since(now - self._settings.heartbeat_grace):
            self._expirations[HEARTBEAT_GRACE] += 1
            instance.status = HealthStatus.UNHEALTHY
            self._settle(instance, healthy_before=True)
        return self._next_deadline(now)

    # -- following a shared store (etcd) ----------------------------------------------------

    def is_severed(self, instance: Instance) -> bool:
        """Downed by a broken KeepAlive stream and not heard from since."""
        return instance in self._severed

    def set_severed(self, instance: Instance, severed: bool) -> None:
        """Mark (or clear) `instance` as downed by a broken stream, publishing nothing."""
        if severed:
            self._severed.add(instance)
        else:
            self._severed.discard(instance)

    def lapse(self, instance: Instance) -> None:
        """A heartbeat-only instance missed its heartbeat grace (decided by its owner)."""
        if instance.heartbeat_only and instance.healthy:
            self._expirations[HEARTBEAT_GRACE] += 1
            instance.status = HealthStatus.UNHEALTHY
            self._settle(instance, healthy_before=True)

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

    def _insert(self, record: Instance) -> Instance:
        instance = record.snapshot()
        instance.service_name = name(record.service_name)
        instance.host = name(record.host)
        instance.metadata = self._metadata.share(record.metadata)
        self._services.setdefault(instance.service_name, {})[instance.instance_id] = instance
        self._count += 1
        self._touch(instance.service_name)
        return instance

    # -- internals --------------------------------------------------------------------------

    def _next_deadline(self, now: float) -> float:
        deadlines = [now + self._settings.registration_ttl]
        if (seen := self._seen.first()) is not None:
            deadlines.append(seen + self._settings.registration_ttl)
        if (beat := self._beating.first()) is not None:
            deadlines.append(beat + self._settings.heartbeat_grace)
        return min(deadlines)

    def _check_limits(self, service_name: str, pending: int = 0, pending_here: int = 0) -> None:
        if self._count + pending >= self._settings.max_instances:
            raise LimitExceeded(
                f"Instance limit reached: at most {self._settings.max_instances} instances"
            )
        here = self.size_of(service_name) + pending_here
        if here >= self._settings.max_instances_per_service:
            raise LimitExceeded(
                f"Instance limit reached: at most {self._settings.max_instances_per_service} "
                f"instances per service"
            )

    def _reregister(self, instance: Instance, registration: Registration) -> Instance:
        healthy_before = instance.healthy
        metadata = self._metadata.share(registration.metadata)
        moved = instance.address != (registration.host, registration.port)
        retarget = moved or instance.health_endpoint != registration.health_endpoint
        changed = retarget or instance.metadata != metadata
        instance.host, instance.port = name(registration.host), registration.port
        instance.health_endpoint = registration.health_endpoint
        instance.metadata = metadata
        heard = self._mark_seen(instance)
        if moved:
            # Another address is another process: nothing known of the old one carries over.
            # At the same address the instance keeps its health, even under a new endpoint.
            instance.status = HealthStatus.UNKNOWN
            instance.load_percentage = 0.0
        if retarget:
            self._severed.discard(instance)
            if instance.heartbeat_only:
                self.probes.drop(instance.key)
            else:
                self._beating.discard(instance)
        self._revive(instance, heard)
        if retarget and not instance.heartbeat_only:
            self.probes.probe_soon(instance)
        self._settle(instance, healthy_before, force=changed)
        return instance

    def _revive(self, instance: Instance, heard: float) -> None:
        """A registration or heartbeat (heard at monotonic `heard`): bring back what a stale
        or broken liveness took."""
        if instance.heartbeat_only:
            self._severed.discard(instance)
            instance.status = HealthStatus.HEALTHY
            self._beating.touch(instance, heard)
        elif instance in self._severed:
            self._severed.discard(instance)
            self.probes.probe_soon(instance)

    def _mark_seen(self, instance: Instance) -> float:
        """Heard from now (the TTL starts over); returns that monotonic time."""
        now = self._clock.monotonic()
        self._seen.touch(instance, now)
        self._touch(instance.service_name)
        return now

    def _touch(self, service_name: str) -> None:
        self._version = self._versions[service_name] = next(self._touches)

    def _settle(self, instance: Instance, healthy_before: bool, force: bool = False) -> None:
        """Re-evaluate critical load and publish when a watcher could see the difference."""
        self._touch(instance.service_name)
        self._touch_store(instance)
        was_critical = instance.critical_load
        critical = self._policy.is_critical(
            was_critical, instance.load_percentage, instance.healthy
        )
        if critical != was_critical:
            instance.critical_load = critical
            instance.critical_since = self._clock.time() if critical else None
        told = instance.published
        assert told is not None  # published when registered
        if (
            force
            or critical != was_critical
            or instance.status is not told.status
            or abs(instance.load_percentage - told.load_percentage) >= LOAD_PUBLISH_STEP
        ):
            self._publish(instance, healthy_before)

    def _remove(self, instance: Instance) -> None:
        if self.follower is not None:
            # Removal is the shared store's (unregister, expiry by the owner): see `apply_delete`.
            return
        self._delete(instance, self._revision + 1)

    def _delete(self, instance: Instance, revision: int) -> None:
        healthy_before = instance.healthy
        self._drop(instance)
        instance.critical_load = False
        instance.critical_since = None
        self._emit(instance, healthy_before, EventType.DELETE, revision)
        instance.published = None

    def _drop(self, instance: Instance) -> None:
        """Take `instance` out of every index (its DELETE is published by the caller)."""
        key = instance.key
        instances = self._services[instance.service_name]
        del instances[instance.instance_id]
        if not instances:
            del self._services[instance.service_name]
        self._count -= 1
        self._seen.discard(instance)
        self._beating.discard(instance)
        self._severed.discard(instance)
        self.probes.drop(key)
        self._touch(instance.service_name)
        if instance.service_name not in self._services:
            del self._versions[instance.service_name]

    def _publish(
        self, instance: Instance, healthy_before: bool, kind: EventType = EventType.PUT
    ) -> None:
        if self.follower is not None:
            # Decided here, published when the shared store hands it back with its revision.
            self.follower.propose(instance)
            return
        self._emit(instance, healthy_before, kind, self._revision + 1)

    def _emit(
        self, instance: Instance, healthy_before: bool, kind: EventType, revision: int
    ) -> None:
        self._revision = revision
        instance.revision = self._revision
        instance.published = snapshot = instance.snapshot()
        change = Change(kind, snapshot, self._revision, healthy_before)
        if kind is EventType.PUT:
            self._store.changed(instance)
        for listener in self._listeners:
            try:
                listener(change)
            except Exception:  # a faulty listener must not break the registry or its callers
                log.exception("Registry listener %r failed", listener)


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
