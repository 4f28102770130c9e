"""The in-memory registry: registrations, heartbeats, probe outcomes, KeepAlive breaks, and the
TTL and heartbeat-grace sweep.

Every change a watcher can see goes through `_publish`, which raises the revision by one and
hands the change to the listeners (see `discovery.core.read_model`), or, when the registry follows
a shared store, to the `follower` that writes it there first. The health monitor learns what to
probe through `probes`.

Durability: registrations and unregistrations reach the store before they get here (the facade
writes them first); the registry tells its store about every liveness change (`touch`, cheap)
and every expiry (`forget`), and takes in what a store held at start-up with `restore`.
"""

from __future__ import annotations

import logging

from discovery.core.following import Following
from discovery.core.interning import Metadata, name
from discovery.core.metrics import HEARTBEAT_GRACE, STREAM_BROKEN, TTL
from discovery.core.model import EventType, HealthStatus, Instance, Registration
from discovery.core.read_model import Follower, Key, Listener, ProbeTargets

__all__ = ["LOAD_PUBLISH_STEP", "Follower", "Key", "Listener", "ProbeTargets", "Registry"]

log = logging.getLogger("discovery.registry")

#: Load drifts smaller than this since the last published load raise no revision.
LOAD_PUBLISH_STEP = 0.05


class Registry(Following):
    """The registry every adapter reaches through the core: what changes instances."""

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

    def lapse(self, instance: Instance) -> None:
        """A heartbeat-only instance missed its heartbeat grace (decided by its owner)."""
        if instance.heartbeat_only and instance.healthy:
            self._expirations[HEARTBEAT_GRACE] += 1
            instance.status = HealthStatus.UNHEALTHY
            self._settle(instance, healthy_before=True)

    def _next_deadline(self, now: float) -> float:
        deadlines = [now + self._settings.registration_ttl]
        if (seen := self._seen.first()) is not None:
            deadlines.append(seen + self._settings.registration_ttl)
        if (beat := self._beating.first()) is not None:
            deadlines.append(beat + self._settings.heartbeat_grace)
        return min(deadlines)

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

    def _publish(
        self, instance: Instance, healthy_before: bool, kind: EventType = EventType.PUT
    ) -> None:
        if self.follower is not None:
            # Decided here, published when the shared store hands it back with its revision.
            self.follower.propose(instance)
            return
        self._emit(instance, healthy_before, kind, self._revision + 1)
