"""The store interface: what the core asks of wherever the registry's state is kept.

The registry stays the fast in-memory read model; a store keeps what must outlive the process.

- Registrations and unregistrations are written before they are applied and acknowledged
  (`put`, `delete`): when either raises `StoreUnavailable`, the write is refused and the
  registry is left as it was. Writes are made durable in the order they were asked for, and the
  core applies them in that same order, so store and registry never disagree.
- An expiry is decided by the registry and cannot be refused: `forget` hands it over, to be
  written in order with the other writes, and retried until it is durable (a registration of
  the same instance meanwhile supersedes it).
- Liveness (heartbeats, load, status, critical load, probe times) changes far more often and is
  only handed over with `touch`, which must be cheap (it is on the heartbeat hot path); the
  store writes the instance's liveness later, in batches, at least every second and at
  `close()`. A change watchers can see (status, critical load) is handed over with `changed`
  and written at once.

`open()` returns what the store held, and the revision the registry must pass before it hands
out another one (so revisions never go backwards across restarts).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from discovery.core.model import Instance


class StoreFailure(RuntimeError):
    """The store cannot be used at all (taken by another process, damaged, not writable).

    Raised by `open()`; the message is one line saying why, and the process exits 1.
    """


@dataclass(frozen=True, slots=True)
class Restored:
    """What a store held when it was opened.

    `instances` are in registration order, each with its registration fields and its last
    written liveness (`status`, `load_percentage`, `critical_load`, `critical_since`,
    `last_heartbeat`, `last_health_check`, `revision`). Every revision handed out from now on
    must be greater than `revision` (0 when the store keeps none).
    """

    instances: list[Instance] = field(default_factory=list)
    revision: int = 0


class Store(Protocol):
    """Durable state under the registry. Used from the core's event loop only."""

    @property
    def description(self) -> str:
        """How the start-up line names it: `memory`, `sqlite PATH`, ..."""

    async def open(self, revision: Callable[[], int]) -> Restored:
        """Take the store (exclusively, where it can) and read what it holds; `StoreFailure`
        when it cannot be used. `revision()` tells the registry's current revision, for stores
        that keep it."""

    def put(self, instance: Instance) -> Awaitable[None]:
        """Make a registration durable: a new instance, or new registration fields (address,
        endpoint, metadata) of a stored one, whose `registered_at` and place in the order are
        kept. Done when durable; `StoreUnavailable` when it cannot be. (A coroutine, or a
        future the store settles itself: a store whose writes are queued can spare its every
        write a task.)"""

    def delete(self, service_name: str, instance_id: str) -> Awaitable[None]:
        """Make an unregistration durable (a missing instance is no error); `StoreUnavailable`
        when it cannot. Awaited as `put` is."""

    def forget(self, instance: Instance) -> None:
        """The registry expired `instance`: delete its row (that registration's, not a later
        one's), in order with the other writes, retrying until it is durable."""

    def touch(self, instance: Instance) -> None:
        """The instance's liveness changed: write it soon (at least within a second)."""

    def changed(self, instance: Instance) -> None:
        """A change watchers see (status, critical load, a load step): write the instance's
        liveness right away, with whatever else is pending."""

    async def close(self) -> None:
        """Write everything pending and let go of the store."""
