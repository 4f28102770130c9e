"""The etcd store: replicas of one service discovery sharing their state through etcd.

Each replica keeps the registry as its in-memory read model, fed by ONE etcd watch on the prefix
(`discovery.etcd.mirror`), and serves reads, Watch and SSE from it. Writes go to etcd first, in
transactions that compare the key's revision (`discovery.etcd.txns`), and are acknowledged once
etcd took them and this replica's watch has applied them; every replica therefore publishes the
same changes at etcd's revisions, and a Watch resumes on any replica.

Liveness (heartbeats, probe outcomes) is decided by the replica that saw it and written by
`discovery.etcd.liveness`; membership and ownership by `discovery.etcd.membership`.

While etcd is unreachable, registrations and unregistrations are refused (`StoreUnavailable`),
reads and watches serve the last state, and the watch reconnects by itself.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from discovery.core.errors import InstanceNotFound, StoreUnavailable
from discovery.core.model import Instance
from discovery.core.settings import Settings
from discovery.core.shared import SharedCore
from discovery.core.store.base import Restored, StoreFailure
from discovery.etcd import records, txns
from discovery.etcd.client import EtcdClient, EtcdError, Tls, wait_cancelled
from discovery.etcd.liveness import LivenessWriter, OwnedProbes
from discovery.etcd.membership import Membership
from discovery.etcd.mirror import Mirror
from discovery.etcd.records import Key, Keys, Record

log = logging.getLogger("discovery.etcd")

#: Attempts of a write whose compared revision keeps moving under it.
WRITE_ATTEMPTS = 10


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
        self.mirror = Mirror(self.client, self.keys, self.membership)
        self._tasks: list[asyncio.Task[None]] = []
        self._locks = txns.KeyLocks()
        self._writer: LivenessWriter | None = None

    # -- what the liveness writer reads (`liveness.SharedRecords`) ------------------------------

    @property
    def records(self) -> dict[Key, Record]:
        """The newest record of each instance this replica knows of (for compares)."""
        return self.mirror.records

    @property
    def applied(self) -> dict[Key, Record]:
        """The record each registry instance was last set from."""
        return self.mirror.applied

    @property
    def connected(self) -> bool:
        return self.mirror.connected

    @property
    def ready_at(self) -> float:
        """Wall time since when this replica has followed etcd without a gap."""
        return self.mirror.ready_at

    # -- wiring -------------------------------------------------------------------------------

    def bind(self, core: SharedCore) -> None:
        """Follow etcd with `core`'s registry: decisions go to etcd, changes come back."""
        self._writer = LivenessWriter(self, core.registry, core.settings, core.clock)
        self.mirror.bind(core, self._writer)
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
        self.mirror.load(loaded_at, kvs)
        assert self._writer is not None
        for name, work in (
            ("etcd-watch", self.mirror.follow()),
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
        # Writes of one key from this replica go one at a time: they would only make each
        # other's compares fail.
        async with self._locks.held(instance.key):
            await self._put(instance)

    async def _put(self, instance: Instance) -> None:
        key = instance.key
        for _ in range(WRITE_ATTEMPTS):
            current = self.mirror.records.get(key)
            proposed = records.registration(current, instance, time.time())
            revision = await self._swap(key, current, proposed)
            if revision:
                await self.mirror.applied_up_to(revision)
                return
            await asyncio.sleep(random.uniform(0, 0.01))  # another replica wrote it: let it finish
        raise StoreUnavailable("etcd: the registration kept conflicting with other writes")

    async def delete(self, service_name: str, instance_id: str) -> None:
        """Unregister; `InstanceNotFound` when etcd no longer holds it."""
        reply = await self._txn(txns.delete(self.keys.instance((service_name, instance_id))))
        if reply.responses[0].response_delete_range.deleted == 0:
            raise InstanceNotFound(service_name, instance_id)
        await self.mirror.applied_up_to(int(reply.header.revision))

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
        request = txns.delete_if_unchanged(self.keys.instance(current.key), current.mod_revision)
        reply = await self.client.txn(request)
        return bool(reply.succeeded)

    async def _swap(self, key: Key, current: Record | None, proposed: Record) -> int:
        try:
            return await self._swap_raw(key, current, proposed)
        except EtcdError as exc:
            raise StoreUnavailable(f"etcd is unavailable: {exc}") from None

    async def _swap_raw(self, key: Key, current: Record | None, proposed: Record) -> int:
        """The write's revision, or 0 when the key changed meanwhile (`records` refreshed)."""
        revision = None if current is None else current.mod_revision
        request = txns.swap(self.keys.instance(key), revision, records.encode(proposed))
        reply = await self.client.txn(request)
        if reply.succeeded:
            return int(reply.header.revision)
        kvs = reply.responses[0].response_range.kvs
        if kvs:
            self.mirror.remember(key, kvs[0])
        else:
            self.mirror.vanished(key, current)
        return 0

    async def _txn(self, request: Any) -> Any:
        try:
            return await self.client.txn(request)
        except EtcdError as exc:
            raise StoreUnavailable(f"etcd is unavailable: {exc}") from None
