"""The etcd transactions the store writes with, and the per-key locks around them.

Every write of an instance compares the key's revision (or its absence), so that concurrent
writers on several replicas cannot lose each other's changes: the loser re-reads the key and
tries again on what won.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aetcd import rpc

from discovery.etcd.records import Key


def same_revision(key: bytes, revision: int) -> Any:
    """A compare that holds while `key` is still at `revision`."""
    return rpc.Compare(
        result=rpc.Compare.EQUAL, target=rpc.Compare.MOD, key=key, mod_revision=revision
    )


def absent(key: bytes) -> Any:
    """A compare that holds while `key` does not exist."""
    return rpc.Compare(
        result=rpc.Compare.EQUAL, target=rpc.Compare.CREATE, key=key, create_revision=0
    )


def swap(key: bytes, revision: int | None, value: bytes) -> Any:
    """Put `value` if `key` is still at `revision` (None: still absent); otherwise read it."""
    return rpc.TxnRequest(
        compare=[absent(key) if revision is None else same_revision(key, revision)],
        success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value))],
        failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key))],
    )


def delete_if_unchanged(key: bytes, revision: int) -> Any:
    """Delete `key` if it is still at `revision`."""
    return rpc.TxnRequest(
        compare=[same_revision(key, revision)],
        success=[rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))],
    )


def delete(key: bytes) -> Any:
    """Delete `key` whatever it holds (the response says whether it existed)."""
    return rpc.TxnRequest(
        success=[rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))]
    )


class KeyLocks:
    """One lock per key, held only while someone uses it (no lock is kept per instance)."""

    def __init__(self) -> None:
        self._locks: dict[Key, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def held(self, key: Key) -> AsyncIterator[None]:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        """How many keys are locked or waited for."""
        return len(self._locks)
