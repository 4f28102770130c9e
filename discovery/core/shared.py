"""A store shared by replicas (etcd): it feeds the registry instead of only keeping its writes.

With a shared store every change reaches the registry through the store's own change feed, at
the store's revision, whichever replica made it: `put` and `delete` return once the feed has
applied the write here. The store takes over what must happen once for all replicas (expiry,
probe ownership, alert delivery) when the core binds it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from discovery.core.clock import Clock
from discovery.core.health.alerts import AlertBook
from discovery.core.health.monitor import HealthMonitor
from discovery.core.registry import Registry
from discovery.core.settings import Settings
from discovery.core.store.base import Store
from discovery.core.watch.hub import WatchHub


class SharedCore(Protocol):
    """What a shared store takes over in the core (`DiscoveryCore` is one)."""

    settings: Settings
    clock: Clock
    registry: Registry
    monitor: HealthMonitor
    alert_book: AlertBook
    watch_hub: WatchHub


@runtime_checkable
class SharedStore(Store, Protocol):
    """A `Store` that several server processes share."""

    def bind(self, core: SharedCore) -> None:
        """Follow the store with `core`'s registry (called once, before `open`)."""

    def hold(self, key: tuple[str, str], held: bool) -> None:
        """A KeepAlive stream on this replica took or let go of an instance."""
