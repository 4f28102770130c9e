"""The store interface: what the core asks of wherever the registry's state is kept.

The registry stays the fast in-memory read model; a store keeps what must outlive the process.
Registrations and unregistrations are written before they are applied and acknowledged: when
`put` or `delete` raises `StoreUnavailable`, the write is refused and the registry is left as
it was. Liveness (heartbeats, load, status, critical load) changes far more often and is only
handed over with `touch`; a store writes it later, in batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from discovery.core.model import Instance


@dataclass(frozen=True, slots=True)
class Restored:
    """What a store held when it was opened: instances in registration order, and the highest
    revision it had handed out (0 when it keeps none)."""

    instances: list[Instance] = field(default_factory=list)
    revision: int = 0


class Store(Protocol):
    """Durable state under the registry. Used from the core's event loop only."""

    @property
    def description(self) -> str:
        """How the start-up line names it: `memory`, `sqlite PATH`, ..."""

    async def open(self) -> Restored:
        """Take the store (exclusively, where it can) and read what it holds."""

    async def put(self, instance: Instance) -> None:
        """Make a registration (new, or changed address, endpoint or metadata) durable."""

    async def delete(self, service_name: str, instance_id: str) -> None:
        """Make an unregistration or expiry durable."""

    def touch(self, instance: Instance) -> None:
        """The instance's liveness changed (heartbeat, load, status): write it soon."""

    async def close(self) -> None:
        """Write what is pending and let go of the store."""
