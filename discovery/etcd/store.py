"""The etcd store: replicas of one service discovery sharing their state through etcd.

Each replica keeps the registry as its in-memory read model, fed by ONE etcd watch on the prefix
(started at the revision of the initial read), and serves reads, Watch and SSE from it. Writes
go to etcd first, in transactions that compare the key's revision, and are acknowledged once
etcd took them and this replica's watch has applied them; every replica therefore publishes the
same changes at etcd's revisions, and a Watch resumes on any replica.

Liveness (heartbeats, probe outcomes) is decided by the replica that saw it and written by
`discovery.etcd.liveness`; membership and ownership by `discovery.etcd.membership`.

While etcd is unreachable, registrations and unregistrations are refused (`StoreUnavailable`),
reads and watches serve the last state, and the watch reconnects by itself: from the last
applied revision, or from a fresh read when etcd compacted that history away.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from aetcd import rpc

from discovery.core.errors import InstanceNotFound, StoreUnavailable
from discovery.core.model import Instance
from discovery.core.settings import Settings
from discovery.core.shared import SharedCore
from discovery.core.store.base import Restored, StoreFailure
from discovery.etcd import records
from discovery.etcd.client import Compacted, EtcdClient, EtcdError, Tls, wait_cancelled
from discovery.etcd.liveness import LivenessWriter, OwnedProbes
from discovery.etcd.membership import Membership
from discovery.etcd.records import Key, Keys, Record

log = logging.getLogger("discovery.etcd")

#: How long an acknowledged write waits for this replica's watch to apply it.
APPLY_TIMEOUT = 5.0
#: Pause before the watch is opened again after etcd went away.
RECONNECT_DELAY = 0.3
#: Attempts of a write whose compared revision keeps moving under it.
WRITE_ATTEMPTS = 10
_PUT, _DELETE = 0, 1


class EtcdStore:
    """A shared store on etcd (`SERVICE_DISCOVERY_STORE=etcd://...`)."""

    shared = True

    def __init__(self, settings: Settings) -> None:
        target = settings.etcd
        assert target is not None
        self.description = f"etcd {target}"
        tls = None
        if settings.etcd_ca_file or settings.etcd_cert_file:
            tls = Tls(settings.etcd_ca_file, settings.etcd_cert_file, settings.etcd_key_file)
        self.client = EtcdClient(
            target.endpoints,
            username=settings.etcd_username,
            password=settings.etcd_password,
            tls=tls,
        )
        self.keys = Keys(target.prefix)
        self.settings = settings
        self.membership = Membership(self.client, self.keys, settings.replica_ttl)
        #: The newest record of each instance this replica knows of (for compares).
        self.records: dict[Key, Record] = {}
        #: The record each registry instance was last set from (what local decisions differ from).
        self.applied: dict[Key, Record] = {}
        self.connected = False
        #: Wall time since when this replica has followed etcd without a gap.
        self.ready_at = 0.0
        self._revision = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._tasks: list[asyncio.Task[None]] = []
        self._locks: dict[Key, tuple[asyncio.Lock, int]] = {}
        self._core: SharedCore | None = None
        self._writer: LivenessWriter | None = None

    # -- wiring -------------------------------------------------------------------------------

    def bind(self, core: SharedCore) -> None:
        """Follow etcd with `core`'s registry: decisions go to etcd, changes come back."""
        self._core = core
        self._writer = LivenessWriter(self, core.registry, core.settings, core.clock)
        core.registry.follower = self._writer
        probes = OwnedProbes(core.monitor, self.membership, core.registry)
        core.registry.probes = probes
        core.alert_book.deliver_for = self.membership.owns
        self.membership.on_change = probes.rebalance

    def owns(self, key: Key) -> bool:
        return self.membership.owns(key)

    @property
    def replica_id(self) -> str:
        return self.membership.replica_id

    @property
    def live(self) -> frozenset[str]:
        return self.membership.live

    def hold(self, key: Key, held: bool) -> None:
        """A KeepAlive stream on this replica took or let go of `key`."""
        if self._writer is not None:
            self._writer.hold(key, held)

    # -- the Store interface ------------------------------------------------------------------

    async def open(self, revision: Callable[[], int]) -> Restored:
        """Announce this replica, read the prefix, load the registry (at etcd's revision: the
        registry's own `revision()` does not matter here), start following."""
        deadline = time.monotonic() + self.settings.etcd_start_timeout
        while True:
            try:
                await self.membership.register()
                loaded_at, kvs = await self.client.range_prefix(self.keys.root)
                break
            except EtcdError as exc:
                if time.monotonic() > deadline:
                    raise StoreFailure(f"etcd is unreachable: {exc}") from None
                log.warning("Waiting for etcd: %s", exc)
                await asyncio.sleep(1.0)
        self._load(loaded_at, kvs)
        assert self._writer is not None
        for name, work in (
            ("etcd-watch", self._follow()),
            ("etcd-lease", self.membership.keep()),
            ("etcd-writer", self._writer.run()),
            ("etcd-sweeper", self._writer.sweep_forever()),
        ):
            self._tasks.append(asyncio.get_running_loop().create_task(work, name=name))
        log.info(
            "Replica %s joined (replica TTL %ss)",
            self.membership.replica_id,
            self.settings.replica_ttl,
        )
        return Restored(revision=loaded_at)

    async def put(self, instance: Instance) -> None:
        """Register (or re-register) `instance`; returns once this replica has applied it."""
        key = instance.key
        # Writes of one key from this replica go one at a time: they would only make each
        # other's compares fail.
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                await self._put(instance)
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    async def _put(self, instance: Instance) -> None:
        key = instance.key
        for _ in range(WRITE_ATTEMPTS):
            current = self.records.get(key)
            proposed = records.registration(current, instance, time.time())
            revision = await self._swap(key, current, proposed)
            if revision:
                await self._applied(revision)
                return
            await asyncio.sleep(random.uniform(0, 0.01))  # another replica wrote it: let it finish
        raise StoreUnavailable("etcd: the registration kept conflicting with other writes")

    async def delete(self, service_name: str, instance_id: str) -> None:
        """Unregister; `InstanceNotFound` when etcd no longer holds it."""
        request = rpc.TxnRequest(
            success=[
                rpc.RequestOp(
                    request_delete_range=rpc.DeleteRangeRequest(
                        key=self.keys.instance((service_name, instance_id))
                    )
                )
            ]
        )
        reply = await self._txn(request)
        if reply.responses[0].response_delete_range.deleted == 0:
            raise InstanceNotFound(service_name, instance_id)
        await self._applied(int(reply.header.revision))

    def forget(self, instance: Instance) -> None:
        """Not used: replicas never expire on their own registry; the owner deletes in etcd."""

    def changed(self, instance: Instance) -> None:
        """Not used: what a replica publishes came from etcd already; its own visible decisions
        reach etcd through the registry's follower (`LivenessWriter.propose`)."""

    def touch(self, instance: Instance) -> None:
        """A heartbeat here: written through within the flush interval (at once if visible)."""
        if self._writer is not None:
            self._writer.touch(instance)

    async def close(self) -> None:
        """Write pending liveness, give up the replica lease, close the connection."""
        if self._writer is not None:
            await self._writer.flush(within=1.0)
        for task in self._tasks:
            await wait_cancelled(task)
        self._tasks.clear()
        await self.membership.leave()
        await self.client.close()

    # -- writes -------------------------------------------------------------------------------

    async def swap(self, current: Record, proposed: Record) -> bool:
        """Replace `current` with `proposed` if nobody wrote it since; `EtcdError` passes."""
        return bool(await self._swap_raw(current.key, current, proposed))

    async def expire(self, current: Record) -> bool:
        """Delete `current` if nobody wrote it since (expiry by its owner)."""
        key = self.keys.instance(current.key)
        request = rpc.TxnRequest(
            compare=[_same_revision(key, current.mod_revision)],
            success=[rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))],
        )
        reply = await self.client.txn(request)
        return bool(reply.succeeded)

    async def _swap(self, key: Key, current: Record | None, proposed: Record) -> int:
        try:
            return await self._swap_raw(key, current, proposed)
        except EtcdError as exc:
            raise StoreUnavailable(f"etcd is unavailable: {exc}") from None

    async def _swap_raw(self, key: Key, current: Record | None, proposed: Record) -> int:
        """The write's revision, or 0 when the key changed meanwhile (`records` refreshed)."""
        raw = self.keys.instance(key)
        compare = (
            _same_revision(raw, current.mod_revision)
            if current is not None
            else rpc.Compare(
                result=rpc.Compare.EQUAL,
                target=rpc.Compare.CREATE,
                key=raw,
                create_revision=0,
            )
        )
        request = rpc.TxnRequest(
            compare=[compare],
            success=[
                rpc.RequestOp(request_put=rpc.PutRequest(key=raw, value=records.encode(proposed)))
            ],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=raw))],
        )
        reply = await self.client.txn(request)
        if reply.succeeded:
            return int(reply.header.revision)
        kvs = reply.responses[0].response_range.kvs
        if kvs:
            self._remember(key, kvs[0])
        elif current is not None and self.records.get(key) is current:
            del self.records[key]
        return 0

    async def _txn(self, request: Any) -> Any:
        try:
            return await self.client.txn(request)
        except EtcdError as exc:
            raise StoreUnavailable(f"etcd is unavailable: {exc}") from None

    async def _applied(self, revision: int) -> None:
        """Wait until the watch has applied `revision` (read-your-writes on this replica)."""
        if self._revision >= revision:
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

    # -- following ----------------------------------------------------------------------------

    def _load(self, revision: int, kvs: list[Any]) -> None:
        assert self._core is not None
        replicas: set[str] = set()
        loaded: list[Record] = []
        for kv in kvs:
            replica = self.keys.replica_id(kv.key)
            if replica is not None:
                replicas.add(replica)
            elif (record := self._decode(kv)) is not None:
                loaded.append(record)
        self.membership.reset(replicas)
        loaded.sort(key=lambda r: r.create_revision)
        for record in loaded:
            self.records[record.key] = self.applied[record.key] = record
        self._core.registry.load([(r.instance, r.severed) for r in loaded], revision)
        self._core.watch_hub.reload()
        self._revision = revision
        self.connected, self.ready_at = True, time.time()

    async def _follow(self) -> None:
        while True:
            try:
                async for reply in self.client.watch(self.keys.root, self._revision + 1):
                    if not self.connected:
                        self.connected, self.ready_at = True, time.time()
                        log.warning(
                            "etcd is reachable again; following from revision %d", self._revision
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

    async def _reload(self) -> None:
        """Catch up from a fresh read: changed instances published, vanished ones deleted."""
        assert self._core is not None
        revision, kvs = await self.client.range_prefix(self.keys.root)
        fresh = {r.key: r for kv in kvs if (r := self._decode(kv)) is not None}
        self.membership.reset({i for kv in kvs if (i := self.keys.replica_id(kv.key))})
        registry = self._core.registry
        # Changed records at their own revisions (in order), vanished ones at the read's: the
        # deletes' own revisions were compacted away.
        for record in sorted(fresh.values(), key=lambda r: r.mod_revision):
            if record.mod_revision > self._revision:
                self._apply_put(record, record.mod_revision)
        for key in [k for k in self.applied if k not in fresh]:
            self.records.pop(key, None)
            self.applied.pop(key, None)
            registry.apply_delete(*key, revision)
        self._advance(revision)

    def _on_event(self, event: Any) -> None:
        kv = event.kv
        replica = self.keys.replica_id(kv.key)
        if replica is not None:
            if event.type == _PUT:
                self.membership.joined(replica)
            else:
                self.membership.left(replica)
        elif event.type == _PUT:
            if (record := self._decode(kv)) is not None:
                self._apply_put(record, record.mod_revision)
        elif (key := self.keys.instance_key(kv.key)) is not None:
            assert self._core is not None
            self.records.pop(key, None)
            self.applied.pop(key, None)
            if self._writer is not None:
                self._writer.forget(key)
            self._core.registry.apply_delete(*key, int(kv.mod_revision))
        self._advance(int(kv.mod_revision))

    def _apply_put(self, record: Record, revision: int) -> None:
        assert self._core is not None
        key = record.key
        known = self.records.get(key)
        if known is None or known.mod_revision <= record.mod_revision:
            self.records[key] = record
        # What this replica decided and has not written yet survives a record written before
        # it landed (a pushed load must not be undone by the owner's probe result).
        pending = self._writer.pending(key) if self._writer is not None else None
        self.applied[key] = record
        self._core.registry.apply(record.instance, revision, record.visible, record.severed)
        if pending is not None and self._writer is not None:
            self._writer.restore(key, pending)

    def _advance(self, revision: int) -> None:
        self._revision = max(self._revision, revision)
        waiters = self._waiters
        while waiters and waiters[0][0] <= self._revision:
            future = heapq.heappop(waiters)[2]
            if not future.done():
                future.set_result(None)

    def _remember(self, key: Key, kv: Any) -> None:
        record = self._decode(kv)
        known = self.records.get(key)
        if record is not None and (known is None or known.mod_revision < record.mod_revision):
            self.records[key] = record

    def _decode(self, kv: Any) -> Record | None:
        try:
            return records.decode(kv.value, int(kv.create_revision), int(kv.mod_revision))
        except ValueError as exc:
            log.warning("Ignoring %r in etcd: %s", kv.key, exc)
            return None


def _same_revision(key: bytes, revision: int) -> Any:
    return rpc.Compare(
        result=rpc.Compare.EQUAL, target=rpc.Compare.MOD, key=key, mod_revision=revision
    )


def _put(key: bytes, value: bytes) -> Any:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value))
