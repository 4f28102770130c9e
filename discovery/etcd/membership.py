"""Which replicas are alive, and which one owns each instance.

Each replica keeps a key `PREFIX/replicas/ID` under a lease of
`SERVICE_DISCOVERY_REPLICA_TTL_SECONDS` and refreshes it three times per TTL; a replica that
dies (SIGKILL) loses its key when the lease runs out, one that stops cleanly revokes it at
once. Every replica sees the same keys through its watch, so all agree on the live set; each
instance is owned by the live replica that scores highest for it (rendezvous hashing), so a
replica coming or going moves only its share.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import uuid
from collections.abc import Callable

from discovery.etcd.client import EtcdClient, EtcdError
from discovery.etcd.records import Key, Keys

log = logging.getLogger("discovery.etcd")


def score(replica_id: str, key: Key) -> int:
    digest = hashlib.blake2b(f"{replica_id}\0{key[0]}\0{key[1]}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big")


class Membership:
    """This replica's lease and the live set as the watch reports it."""

    def __init__(self, client: EtcdClient, keys: Keys, ttl: float) -> None:
        self.replica_id = uuid.uuid4().hex[:16]
        self._client = client
        self._keys = keys
        self._ttl = max(2, math.ceil(ttl))
        self._lease = 0
        self._live: set[str] = {self.replica_id}
        self._owners: dict[Key, str] = {}
        self.on_change: Callable[[], None] = lambda: None

    @property
    def live(self) -> frozenset[str]:
        return frozenset(self._live)

    def owner(self, key: Key) -> str:
        owner = self._owners.get(key)
        if owner is None:
            owner = max(self._live, key=lambda replica: score(replica, key))
            self._owners[key] = owner
        return owner

    def owns(self, key: Key) -> bool:
        return self.owner(key) == self.replica_id

    # -- the live set, from the store ----------------------------------------------------------

    def reset(self, replica_ids: set[str]) -> None:
        self._set(replica_ids | {self.replica_id})

    def joined(self, replica_id: str) -> None:
        if replica_id not in self._live:
            self._set(self._live | {replica_id})

    def left(self, replica_id: str) -> None:
        if replica_id != self.replica_id and replica_id in self._live:
            self._set(self._live - {replica_id})

    def _set(self, live: set[str]) -> None:
        if live == self._live:
            return
        self._live = live
        self._owners.clear()
        log.info("Replicas: %d live", len(live))
        self.on_change()

    # -- this replica's lease -------------------------------------------------------------------

    async def register(self) -> None:
        """Take a lease and announce this replica under it."""
        self._lease = await self._client.grant(self._ttl)
        await self._client.put(self._keys.replica(self.replica_id), b"{}", lease=self._lease)

    async def keep(self) -> None:
        """Refresh the lease until cancelled; take a new one when it ran out (etcd was away)."""
        while True:
            await asyncio.sleep(self._ttl / 3)
            try:
                if self._lease == 0 or await self._client.keepalive(self._lease) <= 0:
                    log.warning("Replica lease lost; announcing this replica again")
                    await self.register()
            except EtcdError as exc:
                log.debug("Replica lease refresh failed: %s", exc)

    async def leave(self) -> None:
        """Give up the lease: the others take over this replica's share at once."""
        if self._lease:
            try:
                await self._client.revoke(self._lease)
            except EtcdError as exc:
                log.warning("Could not revoke the replica lease: %s", exc)
