"""Model test: random registry histories with watchers connecting, reading and reconnecting at
random points; every message obeys the Watch stream rules and every watcher ends with the registry's
view. Hub-level on a fake clock, with tiny limits so resets, chunking and resumes all happen."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from discovery.core.errors import InstanceNotFound
from discovery.core.watch import queue as watch_queue
from discovery.core.watch.hub import Watcher, WatchSelector
from tests.watch_helpers import (
    ClientView,
    drain,
    expected_view,
    hub_on_fake_clock,
    register,
    set_health,
)

SERVICES = ("a", "b", "c")
IDS = ("1", "2", "3", "4")
HISTORY = 12
BACKLOG = 5

names = st.sampled_from(SERVICES)
ids = st.sampled_from(IDS)


@dataclass
class Client:
    selector: WatchSelector
    view: ClientView
    watcher: Watcher | None = None


class WatchModel(RuleBasedStateMachine):
    clients = Bundle("clients")

    @initialize()
    def start(self) -> None:
        self.registry, self.hub, self.clock = hub_on_fake_clock(
            watch_history_size=HISTORY,
            watch_max_backlog=BACKLOG,
            registration_ttl=300,
            heartbeat_interval=60,
        )
        self.all_clients: list[Client] = []

    # -- the registry -----------------------------------------------------------------------

    @rule(service=names, instance=ids, probed=st.booleans(), port=st.sampled_from([80, 81]))
    def register(self, service: str, instance: str, probed: bool, port: int) -> None:
        register(self.registry, service, instance, probed=probed, port=port)

    @rule(
        service=names,
        instance=ids,
        load=st.none() | st.floats(0, 1),
    )
    def heartbeat(self, service: str, instance: str, load: float | None) -> None:
        with contextlib.suppress(InstanceNotFound):
            self.registry.heartbeat(service, instance, load)

    @rule(service=names, instance=ids, healthy=st.booleans())
    def probe(self, service: str, instance: str, healthy: bool) -> None:
        if self.registry.get(service, instance) is not None:
            set_health(self.registry, service, instance, healthy)

    @rule(service=names, instance=ids)
    def unregister(self, service: str, instance: str) -> None:
        with contextlib.suppress(InstanceNotFound):
            self.registry.unregister(service, instance)

    @rule(seconds=st.sampled_from([1, 50, 130, 310]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.registry.sweep()  # heartbeat-only instances go stale, registrations expire

    @rule(service=names, instance=ids)
    def stream_breaks(self, service: str, instance: str) -> None:
        self.registry.sever([(service, instance)])

    # -- the watchers -----------------------------------------------------------------------

    @rule(
        target=clients,
        services=st.frozensets(names, max_size=2),
        healthy_only=st.booleans(),
    )
    def new_client(self, services: frozenset[str], healthy_only: bool) -> Client:
        client = Client(WatchSelector(services, healthy_only), ClientView())
        self.all_clients.append(client)
        return client

    @rule(client=clients, where=st.sampled_from(["own", "zero", "ancient", "ahead"]))
    def connect(self, client: Client, where: str) -> None:
        if client.watcher is not None:
            return
        start = {
            "own": client.view.revision,
            "zero": 0,
            "ancient": 1,
            "ahead": self.registry.revision + 3,
        }[where]
        if where == "own" and not client.view.synced:
            start = 0
        selector = WatchSelector(client.selector.services, client.selector.healthy_only, start)
        client.watcher = self.hub.watch(selector)

    @rule(client=clients, count=st.integers(1, 4))
    def read(self, client: Client, count: int) -> None:
        if client.watcher is None:
            return
        for _ in range(count):
            batch = client.watcher.poll()
            if batch is None:
                return
            client.view.apply(batch)

    @rule(client=clients)
    def disconnect(self, client: Client) -> None:
        if client.watcher is not None:
            client.watcher.close()
            client.watcher = None
            client.view.pending = None  # half a snapshot is dropped; resume from the last sync

    @precondition(lambda self: self.all_clients)
    @rule()
    def everyone_catches_up(self) -> None:
        self._catch_up()

    @invariant()
    def queues_are_bounded(self) -> None:
        for client in getattr(self, "all_clients", ()):
            if client.watcher is not None:
                assert client.watcher.backlog <= BACKLOG

    def teardown(self) -> None:
        if hasattr(self, "registry"):
            self._catch_up()

    def _catch_up(self) -> None:
        for client in self.all_clients:
            if client.watcher is None:
                start = client.view.revision if client.view.synced else 0
                selector = WatchSelector(
                    client.selector.services, client.selector.healthy_only, start
                )
                client.watcher = self.hub.watch(selector)
            drain(client.watcher, client.view)
            expected = expected_view(
                self.registry, client.selector.services, client.selector.healthy_only
            )
            assert client.view.pending is None
            assert client.view.keys == expected


def test_every_watcher_ends_with_the_registrys_view(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch_queue, "MAX_BATCH_EVENTS", 3)  # snapshots come in several messages
    run_state_machine_as_test(
        WatchModel,
        settings=settings(
            max_examples=150,
            stateful_step_count=60,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
