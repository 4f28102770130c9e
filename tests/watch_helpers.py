"""Helpers for watch tests: a registry with a hub on a fake clock, and a client-side view that
applies watch messages by the rules of the Watch stream and fails on any message breaking them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from discovery.core.model import EventType, HealthStatus, Instance, Registration
from discovery.core.registry import Registry
from discovery.core.watch.hub import WatchBatch, Watcher, WatchHub
from discovery.testing import FakeClock, test_settings

Key = tuple[str, str]


def hub_on_fake_clock(**settings: Any) -> tuple[Registry, WatchHub, FakeClock]:
    clock = FakeClock()
    config = test_settings(**settings)
    registry = Registry(config, clock)
    return registry, WatchHub(registry, config), clock


def register(
    registry: Registry, service: str, instance: str, probed: bool = False, port: int = 8080
) -> Instance:
    endpoint = "/health" if probed else None
    return registry.register(Registration(service, instance, "127.0.0.1", port, endpoint))[0]


def set_health(registry: Registry, service: str, instance: str, healthy: bool) -> None:
    status = HealthStatus.HEALTHY if healthy else HealthStatus.UNHEALTHY
    registry.record_health(registry.require(service, instance), status, None)


def expected_view(
    registry: Registry, services: frozenset[str] = frozenset(), healthy_only: bool = False
) -> dict[Key, int]:
    """What a watcher with this selector should hold: instance key -> last-change revision."""
    return {
        i.key: i.revision
        for i in registry.all_instances()
        if (not services or i.service_name in services) and (i.healthy or not healthy_only)
    }


@dataclass
class ClientView:
    """A watch client's view. `apply` asserts every rule a message must follow."""

    instances: dict[Key, Instance] = field(default_factory=dict)
    pending: dict[Key, Instance] | None = None
    snapshot_revision: int = 0
    revision: int = 0
    synced: bool = False
    live_revisions: list[int] = field(default_factory=list)
    resets: int = 0

    def apply(self, batch: WatchBatch) -> None:
        if batch.reset:
            assert batch.snapshot
            self.pending = {}
            self.snapshot_revision = batch.revision
            self.resets += 1
        if self.pending is not None:
            self._apply_snapshot(batch)
        else:
            self._apply_live(batch)

    def _apply_snapshot(self, batch: WatchBatch) -> None:
        assert self.pending is not None
        assert batch.snapshot, "a snapshot runs until its synced message"
        assert batch.revision == self.snapshot_revision, "snapshot messages share its revision"
        for event in batch.events:
            assert event.type is EventType.PUT
            assert event.revision <= batch.revision
            assert event.revision == event.instance.revision
            key = event.instance.key
            assert key not in self.pending, f"{key} twice in one snapshot"
            self.pending[key] = event.instance
        if batch.synced:
            self.instances, self.pending = self.pending, None
            self.revision = batch.revision
            self.synced = True

    def _apply_live(self, batch: WatchBatch) -> None:
        assert self.synced or not batch.snapshot
        assert batch.synced
        assert not batch.reset
        assert not batch.snapshot
        if not batch.events:
            assert batch.revision >= self.revision, "progress never goes back"
        else:
            revisions = [e.revision for e in batch.events]
            assert revisions == sorted(set(revisions)), "events in revision order, each once"
            assert revisions[0] > self.revision, "nothing the client was told already"
            assert batch.revision == revisions[-1]
        for event in batch.events:
            self.live_revisions.append(event.revision)
            if event.type is EventType.PUT:
                self.instances[event.instance.key] = event.instance
            else:
                self.instances.pop(event.instance.key, None)
        self.revision = batch.revision
        self.synced = True

    @property
    def keys(self) -> dict[Key, int]:
        return {key: i.revision for key, i in self.instances.items()}


def drain(watcher: Watcher, view: ClientView | None = None, limit: int = 100_000) -> ClientView:
    """Apply every message the watcher owes right now."""
    view = view if view is not None else ClientView()
    for _ in range(limit):
        batch = watcher.poll()
        if batch is None:
            return view
        view.apply(batch)
    raise AssertionError("the watcher never ran dry")
