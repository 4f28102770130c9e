"""The registry's state and how a change is published: instances by service, the revision
counter, liveness deadlines and the versions that key caches of encoded answers.

Every change a watcher can see ends in `_emit`, which sets the change's revision and hands it to
the listeners (the watch hub, which keeps recent changes for resumes, and the alert book). The
write side (`discovery.core.registry`) and the following of a shared store
(`discovery.core.following`) build on this class; it is used from one event loop only and never
awaits, so each operation is atomic.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Collection, Iterator
from typing import Protocol

from discovery.core.clock import Clock
from discovery.core.critical_load import CriticalLoadPolicy
from discovery.core.errors import InstanceNotFound, LimitExceeded, ServiceNotFound
from discovery.core.interning import MetadataPool, name
from discovery.core.liveness import Deadlines
from discovery.core.metrics import Metrics
from discovery.core.model import Change, EventType, HealthStatus, Instance
from discovery.core.settings import Settings
from discovery.core.store.base import Store
from discovery.core.store.memory import MemoryStore

log = logging.getLogger("discovery.registry")

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


class ReadModel:
    """Registered instances by service, in registration order, and what reads them."""

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

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` with every change; returns the function that stops it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def attach(self, store: Store) -> None:
        """Tell `store` about every liveness change and expiry from now on."""
        self._store = store
        self._touch_store = store.touch

    def check_limits(self, service_name: str, pending: int = 0, pending_here: int = 0) -> None:
        """`LimitExceeded` when one more instance of `service_name` would pass an instance
        limit, counting `pending` new instances not applied yet (`pending_here` of them in
        that service)."""
        self._check_limits(service_name, pending, pending_here)

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

    def _insert(self, record: Instance) -> Instance:
        instance = record.snapshot()
        instance.service_name = name(record.service_name)
        instance.host = name(record.host)
        instance.metadata = self._metadata.share(record.metadata)
        self._services.setdefault(instance.service_name, {})[instance.instance_id] = instance
        self._count += 1
        self._touch(instance.service_name)
        return instance

    def _touch(self, service_name: str) -> None:
        self._version = self._versions[service_name] = next(self._touches)

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
