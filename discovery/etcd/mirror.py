"""This replica's mirror of the prefix: what etcd holds, applied to the registry in revision order.

ONE etcd watch on the prefix (started at the revision of the initial read) feeds it: instance
records go to the registry (which publishes them to watchers at etcd's revisions), replica keys
to the membership. Writers wait here until the watch has applied their write's revision
(read-your-writes on this replica).

When etcd goes away the watch reconnects by itself, from the last applied revision, or from a
fresh read (published as changes) when etcd compacted that history away.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from typing import Any, Protocol

from discovery.core.errors import StoreUnavailable
from discovery.core.shared import SharedCore
from discovery.etcd import records
from discovery.etcd.client import Compacted, EtcdClient, EtcdError
from discovery.etcd.membership import Membership
from discovery.etcd.records import Key, Keys, Record

log = logging.getLogger("discovery.etcd")

#: How long an acknowledged write waits for this replica's watch to apply it.
APPLY_TIMEOUT = 5.0
#: Pause before the watch is opened again after etcd went away.
RECONNECT_DELAY = 0.3
_PUT = 0


class Pending(Protocol):
    """What this replica decided and has not written yet (`LivenessWriter` keeps it)."""

    def pending(self, key: Key) -> dict[str, object] | None:
        """The decisions on `key` not written yet, or None."""

    def restore(self, key: Key, decided: dict[str, object]) -> None:
        """Put back what `pending()` returned, after a record from etcd was applied."""

    def forget(self, key: Key) -> None:
        """`key` was deleted in etcd."""


class Mirror:
    """The records under the prefix as this replica's watch last applied them."""

    def __init__(self, client: EtcdClient, keys: Keys, membership: Membership) -> None:
        self._client = client
        self._keys = keys
        self._membership = membership
        #: The newest record of each instance this replica knows of (for compares).
        self.records: dict[Key, Record] = {}
        #: The record each registry instance was last set from (what local decisions differ from).
        self.applied: dict[Key, Record] = {}
        self.connected = False
        #: Wall time since when this replica has followed etcd without a gap.
        self.ready_at = 0.0
        self.revision = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._core: SharedCore | None = None
        self._pending: Pending | None = None

    def bind(self, core: SharedCore, pending: Pending) -> None:
        """Apply to `core`'s registry, keeping what `pending` holds undecided."""
        self._core, self._pending = core, pending

    async def applied_up_to(self, revision: int) -> None:
        """Wait until the watch has applied `revision`; `StoreUnavailable` past a time-out."""
        if self.revision >= revision:
            return
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (revision, next(self._order), future))
        try:
            async with asyncio.timeout(APPLY_TIMEOUT):
                await future
        except TimeoutError:
            raise StoreUnavailable(
                "etcd took the write but this replica did not see it in time"
            ) from None

    def remember(self, key: Key, kv: Any) -> None:
        """A key-value read back by a write whose compare failed: newer than what we had?"""
        record = self._decode(kv)
        known = self.records.get(key)
        if record is not None and (known is None or known.mod_revision < record.mod_revision):
            self.records[key] = record

    def vanished(self, key: Key, current: Record | None) -> None:
        """A write found `key` gone while we held `current` for it."""
        if current is not None and self.records.get(key) is current:
            del self.records[key]

    def load(self, revision: int, kvs: list[Any]) -> None:
        """Take the initial read of the prefix (at `revision`) as the registry's state."""
        assert self._core is not None
        replicas: set[str] = set()
        loaded: list[Record] = []
        for kv in kvs:
            replica = self._keys.replica_id(kv.key)
            if replica is not None:
                replicas.add(replica)
            elif (record := self._decode(kv)) is not None:
                loaded.append(record)
        self._membership.reset(replicas)
        loaded.sort(key=lambda r: r.create_revision)
        for record in loaded:
            self.records[record.key] = self.applied[record.key] = record
        self._core.registry.load([(r.instance, r.severed) for r in loaded], revision)
        self._core.watch_hub.reload()
        self.revision = revision
        self.connected, self.ready_at = True, time.time()

    async def follow(self) -> None:
        """Apply every change under the prefix, reconnecting whenever etcd went away."""
        while True:
            try:
                async for reply in self._client.watch(self._keys.root, self.revision + 1):
                    if not self.connected:
                        self.connected, self.ready_at = True, time.time()
                        log.warning(
                            "etcd is reachable again; following from revision %d", self.revision
                        )
                    for event in reply.events:
                        self._on_event(event)
            except Compacted as exc:
                log.warning("etcd compacted the history this replica needs (%s); reloading", exc)
                await self._reload()
            except EtcdError as exc:
                if self.connected:
                    log.warning("etcd is unreachable (%s); serving the last state", exc)
                self.connected = False
                await asyncio.sleep(RECONNECT_DELAY)

    # -- internals --------------------------------------------------------------------------

    async def _reload(self) -> None:
        """Catch up from a fresh read: changed instances published, vanished ones deleted."""
        assert self._core is not None
        revision, kvs = await self._client.range_prefix(self._keys.root)
        fresh = {r.key: r for kv in kvs if (r := self._decode(kv)) is not None}
        self._membership.reset({i for kv in kvs if (i := self._keys.replica_id(kv.key))})
        registry = self._core.registry
        # Changed records at their own revisions (in order), vanished ones at the read's: the
        # deletes' own revisions were compacted away.
        for record in sorted(fresh.values(), key=lambda r: r.mod_revision):
            if record.mod_revision > self.revision:
                self._apply_put(record)
        for key in [k for k in self.applied if k not in fresh]:
            self.records.pop(key, None)
            self.applied.pop(key, None)
            registry.apply_delete(*key, revision)
        self._advance(revision)

    def _on_event(self, event: Any) -> None:
        kv = event.kv
        replica = self._keys.replica_id(kv.key)
        if replica is not None:
            if event.type == _PUT:
                self._membership.joined(replica)
            else:
                self._membership.left(replica)
        elif event.type == _PUT:
            if (record := self._decode(kv)) is not None:
                self._apply_put(record)
        elif (key := self._keys.instance_key(kv.key)) is not None:
            assert self._core is not None
            self.records.pop(key, None)
            self.applied.pop(key, None)
            if self._pending is not None:
                self._pending.forget(key)
            self._core.registry.apply_delete(*key, int(kv.mod_revision))
        self._advance(int(kv.mod_revision))

    def _apply_put(self, record: Record) -> None:
        assert self._core is not None
        key = record.key
        known = self.records.get(key)
        if known is None or known.mod_revision <= record.mod_revision:
            self.records[key] = record
        # What this replica decided and has not written yet survives a record written before
        # it landed (a pushed load must not be undone by the owner's probe result).
        pending = self._pending.pending(key) if self._pending is not None else None
        self.applied[key] = record
        self._core.registry.apply(
            record.instance, record.mod_revision, record.visible, record.severed
        )
        if pending is not None and self._pending is not None:
            self._pending.restore(key, pending)

    def _advance(self, revision: int) -> None:
        self.revision = max(self.revision, revision)
        waiters = self._waiters
        while waiters and waiters[0][0] <= self.revision:
            future = heapq.heappop(waiters)[2]
            if not future.done():
                future.set_result(None)

    def _decode(self, kv: Any) -> Record | None:
        try:
            return records.decode(kv.value, int(kv.create_revision), int(kv.mod_revision))
        except ValueError as exc:
            log.warning("Ignoring %r in etcd: %s", kv.key, exc)
            return None
