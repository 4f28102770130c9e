"""Liveness across replicas without an etcd write per heartbeat.

A heartbeat is absorbed by the replica that got it: its registry notes it, and the
`LivenessWriter` writes it through at most once per flush interval per instance
(`min(TTL, heartbeat grace) / 3`), or at once when a watcher would see the difference (status,
critical load, a load step of 0.05) or a broken stream's mark changed. Probe outcomes are
decided by the instance's owner and written the same way.

Expiry happens once for the cluster: only the owner of an instance expires it, by a delete that
compares the record's revision (a heartbeat written meanwhile wins), counting from the newest
sign of life any replica wrote through. A replica expires nothing while it cannot follow etcd,
and counts a full TTL again from the moment it follows it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from discovery.core.clock import Clock
from discovery.core.critical_load import CriticalLoadPolicy
from discovery.core.health.monitor import HealthMonitor
from discovery.core.model import Instance
from discovery.core.registry import Registry
from discovery.core.settings import Settings
from discovery.etcd import records
from discovery.etcd.client import EtcdError
from discovery.etcd.membership import Membership
from discovery.etcd.records import Key, Record

log = logging.getLogger("discovery.etcd")

#: Pause before a write that failed (etcd away) is tried again.
RETRY_DELAY = 0.5
#: Writes in flight at once.
WRITE_CONCURRENCY = 64
#: The liveness fields a replica decides (the rest of a record is the registration's).
_DECIDED = ("status", "load_percentage", "last_health_check")


class SharedRecords(Protocol):
    """What the writer needs of the store (`discovery.etcd.store.EtcdStore` is one)."""

    @property
    def records(self) -> dict[Key, Record]: ...

    @property
    def applied(self) -> dict[Key, Record]: ...

    @property
    def connected(self) -> bool: ...

    @property
    def ready_at(self) -> float: ...

    @property
    def replica_id(self) -> str: ...

    @property
    def live(self) -> frozenset[str]: ...

    def owns(self, key: Key) -> bool: ...

    async def swap(self, current: Record, proposed: Record) -> bool: ...

    async def expire(self, current: Record) -> bool: ...


class OwnedProbes:
    """The registry's probe targets in etcd mode: only instances this replica owns are probed."""

    def __init__(self, monitor: HealthMonitor, membership: Membership, registry: Registry) -> None:
        self._monitor = monitor
        self._membership = membership
        self._registry = registry

    def probe_soon(self, instance: Instance) -> None:
        if self._membership.owns(instance.key):
            self._monitor.probe_soon(instance)
        else:
            self._monitor.drop(instance.key)

    def drop(self, key: Key) -> None:
        self._monitor.drop(key)

    def rebalance(self) -> None:
        """The live set changed: take up newly owned instances (probed at once), drop others."""
        for instance in self._registry.all_instances():
            if instance.heartbeat_only:
                continue
            if not self._membership.owns(instance.key):
                self._monitor.drop(instance.key)
            elif not self._monitor.probing(instance.key):
                self._monitor.probe_soon(instance)


class LivenessWriter:
    """The registry's `Follower`: writes what this replica decided, and expires what it owns."""

    def __init__(
        self, store: SharedRecords, registry: Registry, settings: Settings, clock: Clock
    ) -> None:
        self._store = store
        self._registry = registry
        self._settings = settings
        self._clock = clock
        self._policy = CriticalLoadPolicy.from_settings(settings)
        self.flush_interval = min(settings.registration_ttl, settings.heartbeat_grace) / 3
        self._dirty: dict[Key, float] = {}
        self._flushed: dict[Key, float] = {}
        self._expiring: set[Key] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        #: Instances a KeepAlive stream on this replica holds.
        self._held: set[Key] = set()
        self._inflight: set[Key] = set()
        self._wake = asyncio.Event()

    # -- what the registry and the store call -------------------------------------------------

    def propose(self, instance: Instance) -> None:
        self._due(instance.key, 0.0)

    def touch(self, instance: Instance) -> None:
        key = instance.key
        current = self._store.records.get(key)
        if current is None:
            return
        base = self._store.applied.get(key)
        if base is not None and self._registry.is_severed(instance) != base.severed:
            self._due(key, 0.0)
        else:
            since = max(current.seen_at, self._flushed.get(key, 0.0))
            self._due(key, since + self.flush_interval)

    def hold(self, key: Key, held: bool) -> None:
        """A KeepAlive stream here took (or let go of) the instance: the record names this
        replica as its keeper, so the instance is severed if this replica dies."""
        if held:
            self._held.add(key)
        else:
            self._held.discard(key)
        current = self._store.records.get(key)
        if current is not None and (current.kept_by == self._store.replica_id) != held:
            self._due(key, 0.0)

    def pending(self, key: Key) -> dict[str, object] | None:
        """The decisions on `key` made here and not written yet (fields where the registry's
        instance differs from the record it was last set from), or None."""
        if key not in self._dirty and key not in self._inflight:
            return None
        instance = self._registry.get(*key)
        base = self._store.applied.get(key)
        if instance is None or base is None:
            return None
        decided: dict[str, object] = {
            name: getattr(instance, name)
            for name in _DECIDED
            if getattr(instance, name) != getattr(base.instance, name)
        }
        severed = self._registry.is_severed(instance)
        if severed != base.severed:
            decided["severed"] = severed
        return decided

    def restore(self, key: Key, decided: dict[str, object]) -> None:
        """Put `decided` (from `pending`) back on the registry's instance and keep it due."""
        instance = self._registry.get(*key)
        if instance is None or not decided:
            return
        for name, value in decided.items():
            if name == "severed":
                self._registry.set_severed(instance, bool(value))
            else:
                setattr(instance, name, value)
        self._due(key, 0.0)

    def forget(self, key: Key) -> None:
        self._dirty.pop(key, None)
        self._flushed.pop(key, None)

    def _due(self, key: Key, at: float) -> None:
        due = self._dirty.get(key)
        if due is None or at < due:
            self._dirty[key] = at
            if at <= self._clock.time():
                self._wake.set()

    # -- writing ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Write what is due until cancelled."""
        while True:
            self._wake.clear()
            now = self._clock.time()
            due = [key for key, at in self._dirty.items() if at <= now]
            for key in due:
                del self._dirty[key]
            for start in range(0, len(due), WRITE_CONCURRENCY):
                chunk = due[start : start + WRITE_CONCURRENCY]
                await asyncio.gather(*(self._write(key, now) for key in chunk))
            delay = min(self._dirty.values(), default=now + 1.0) - self._clock.time()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(1.0, max(0.005, delay))):
                    await self._wake.wait()

    async def flush(self, within: float) -> None:
        """Write every pending change now (at shutdown), for at most `within` seconds."""
        keys = list(self._dirty)
        self._dirty.clear()
        now = self._clock.time()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await asyncio.gather(*(self._write(key, now, force=True) for key in keys))

    async def _write(self, key: Key, now: float, force: bool = False) -> None:
        proposed = self._proposal(key, now)
        if proposed is None:
            return
        current, record = proposed
        if not (force or records.urgent(current, record)):
            since = max(current.seen_at, self._flushed.get(key, 0.0))
            if now < since + self.flush_interval:
                self._due(key, since + self.flush_interval)
                return
        self._inflight.add(key)
        try:
            written = await self._store.swap(current, record)
        except EtcdError as exc:
            log.debug("Liveness of %s:%s not written (%s); retrying", *key, exc)
            self._due(key, self._clock.time() + RETRY_DELAY)
            return
        finally:
            self._inflight.discard(key)
        if written:
            self._flushed[key] = now
        else:
            self._due(key, 0.0)  # someone wrote it meanwhile: merge onto theirs and retry

    def _proposal(self, key: Key, now: float) -> tuple[Record, Record] | None:
        instance = self._registry.get(*key)
        current = self._store.records.get(key)
        base = self._store.applied.get(key)
        if instance is None or current is None or base is None:
            return None
        severed = self._registry.is_severed(instance)
        if severed == base.severed:
            severed = current.severed  # not decided here: keep what the store holds
        kept_by = current.kept_by
        if key in self._held:
            kept_by = self._store.replica_id
        elif kept_by == self._store.replica_id or kept_by not in self._store.live:
            kept_by = None
        record = records.liveness(
            current,
            instance,
            base.instance,
            instance.last_heartbeat,
            severed,
            kept_by,
            self._policy,
            now,
        )
        return None if record is None else (current, record)

    # -- expiry -------------------------------------------------------------------------------

    async def sweep_forever(self) -> None:
        """Expire owned instances past their TTL, lapse heartbeat-only ones past their grace."""
        settings = self._settings
        cap = min(1.0, max(0.02, min(settings.registration_ttl, settings.heartbeat_grace) / 10))
        while True:
            await asyncio.sleep(cap)
            if self._store.connected:
                self._sweep(self._clock.time())

    def _sweep(self, now: float) -> None:
        ttl, grace = self._settings.registration_ttl, self._settings.heartbeat_grace
        store = self._store
        for key, record in list(store.records.items()):
            if not store.owns(key):
                continue
            instance = self._registry.get(*key)
            if record.kept_by is not None and record.kept_by not in store.live:
                # Its KeepAlive stream died with its replica: a break, as if the stream broke.
                self._registry.sever([key])
                self._due(key, 0.0)
            heard = instance.last_heartbeat if instance is not None else None
            since = max(record.seen_at, heard or 0.0, store.ready_at)
            if now - since > ttl:
                if key not in self._expiring:
                    self._expiring.add(key)
                    task = asyncio.get_running_loop().create_task(self._expire(record))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            elif (
                instance is not None
                and instance.heartbeat_only
                and instance.healthy
                and now - since > grace
            ):
                self._registry.lapse(instance)

    async def _expire(self, record: Record) -> None:
        try:
            if await self._store.expire(record):
                self._registry.expired_by_owner()
                log.info(
                    "Registration of %s:%s expired (no heartbeat for %ss)",
                    *record.key,
                    self._settings.registration_ttl,
                )
        except EtcdError as exc:
            log.debug("Expiry of %s:%s not written (%s)", *record.key, exc)
        finally:
            self._expiring.discard(record.key)
