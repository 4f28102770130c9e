"""The registry on a fake clock: revisions, history, TTL expiry, heartbeat-only liveness, limits."""

from __future__ import annotations

import pytest

from discovery.core.errors import InstanceNotFound, LimitExceeded, ServiceNotFound
from discovery.core.model import Change, EventType, HealthStatus, Instance, Registration
from discovery.core.registry import Registry
from discovery.core.settings import Settings
from discovery.testing import FakeClock


def make(**changes: object) -> tuple[Registry, FakeClock, list[Change]]:
    clock = FakeClock()
    registry = Registry(Settings().replace(**changes), clock)
    changes_seen: list[Change] = []
    registry.subscribe(changes_seen.append)
    return registry, clock, changes_seen


def status(instance: Instance) -> HealthStatus:
    """Read afresh, so that mypy does not keep an earlier assertion's narrowing."""
    return instance.status


def reg(
    service: str = "game",
    instance: str = "game-1",
    host: str = "10.0.0.5",
    port: int = 8080,
    endpoint: str | None = "/health",
    metadata: dict[str, str] | None = None,
) -> Registration:
    return Registration(service, instance, host, port, endpoint, metadata or {})


class Probes:
    def __init__(self) -> None:
        self.soon: list[tuple[str, str]] = []
        self.dropped: list[tuple[str, str]] = []

    def probe_soon(self, instance: Instance) -> None:
        self.soon.append(instance.key)

    def drop(self, key: tuple[str, str]) -> None:
        self.dropped.append(key)


def test_revision_starts_from_the_clock_and_rises_by_one_per_change() -> None:
    registry, clock, seen = make()
    start = registry.revision
    assert start == int(clock.time() * 1_000_000)
    registry.register(reg())
    registry.register(reg(instance="game-2"))
    registry.unregister("game", "game-1")
    assert [c.revision for c in seen] == [start + 1, start + 2, start + 3]
    assert [c.type for c in seen] == [EventType.PUT, EventType.PUT, EventType.DELETE]
    assert registry.revision == start + 3


def test_a_restarted_registry_never_goes_back() -> None:
    first, clock, _ = make()
    for i in range(50):
        first.register(reg(instance=f"i-{i}"))
    clock.advance(0.001)
    second = Registry(Settings(), clock)
    assert second.revision > first.revision


def test_new_probed_instance_is_unknown_and_probed_at_once() -> None:
    registry, _, _ = make()
    probes = Probes()
    registry.probes = probes
    instance, created = registry.register(reg())
    assert created
    assert instance.status is HealthStatus.UNKNOWN
    assert probes.soon == [("game", "game-1")]


def test_heartbeat_only_instance_is_healthy_at_once_and_never_probed() -> None:
    registry, _, _ = make()
    probes = Probes()
    registry.probes = probes
    instance, _ = registry.register(reg(endpoint=None))
    assert instance.status is HealthStatus.HEALTHY
    assert probes.soon == []
    assert registry.healthy("game") == [instance]


def test_instances_are_listed_in_registration_order() -> None:
    registry, _, _ = make()
    for name in ("b", "a", "c"):
        registry.register(reg(service="svc", instance=name))
    registry.register(reg(service="other", instance="x"))
    registry.register(reg(service="svc", instance="a", port=9))  # re-registration keeps place
    assert [i.instance_id for i in registry.instances("svc")] == ["b", "a", "c"]
    assert list(registry.services()) == ["svc", "other"]


def test_reregistering_at_the_same_address_keeps_health_and_raises_nothing() -> None:
    registry, _, seen = make()
    instance, _ = registry.register(reg())
    registry.record_health(instance, HealthStatus.HEALTHY, 0.3)
    before = len(seen)
    again, created = registry.register(reg())
    assert again is instance
    assert not created
    assert instance.status is HealthStatus.HEALTHY
    assert instance.load_percentage == 0.3
    assert len(seen) == before


def test_reregistering_at_a_new_address_resets_health_and_probes_at_once() -> None:
    registry, _, seen = make()
    probes = Probes()
    registry.probes = probes
    instance, _ = registry.register(reg())
    registry.record_health(instance, HealthStatus.HEALTHY, 0.3)
    registry.register(reg(port=9090))
    assert instance.status is HealthStatus.UNKNOWN
    assert instance.port == 9090
    assert probes.soon == [("game", "game-1"), ("game", "game-1")]
    assert seen[-1].instance.port == 9090
    assert seen[-1].healthy_before


def test_a_new_endpoint_at_the_same_address_keeps_health_and_probes_at_once() -> None:
    registry, _, seen = make()
    probes = Probes()
    registry.probes = probes
    instance, _ = registry.register(reg())
    registry.record_health(instance, HealthStatus.HEALTHY, 0.3)
    registry.register(reg(endpoint="/ready"))
    assert instance.status is HealthStatus.HEALTHY
    assert instance.load_percentage == 0.3
    assert probes.soon == [instance.key, instance.key]
    assert seen[-1].instance.health_endpoint == "/ready"


def test_turning_heartbeat_only_drops_the_probes_and_back() -> None:
    registry, _, _ = make()
    probes = Probes()
    registry.probes = probes
    instance, _ = registry.register(reg())
    registry.register(reg(endpoint=None))
    assert probes.dropped == [instance.key]
    assert instance.status is HealthStatus.HEALTHY
    registry.register(reg(endpoint="/health"))
    assert probes.soon == [instance.key, instance.key]
    assert instance.status is HealthStatus.HEALTHY  # same address: keeps its health


def test_metadata_change_is_a_put() -> None:
    registry, _, seen = make()
    registry.register(reg())
    registry.register(reg(metadata={"version": "2"}))
    assert seen[-1].type is EventType.PUT
    assert seen[-1].instance.metadata == {"version": "2"}


def test_small_load_drifts_are_coalesced() -> None:
    registry, _, seen = make()
    registry.register(reg(endpoint=None))
    count = len(seen)
    registry.heartbeat("game", "game-1", 0.02)
    registry.heartbeat("game", "game-1", 0.04)
    assert len(seen) == count
    registry.heartbeat("game", "game-1", 0.05)
    assert len(seen) == count + 1
    assert seen[-1].instance.load_percentage == 0.05
    registry.heartbeat("game", "game-1", 0.01)  # 0.04 below the last published load
    assert len(seen) == count + 1
    registry.heartbeat("game", "game-1", 0.0)
    assert len(seen) == count + 2


def test_heartbeat_timestamps_alone_raise_nothing() -> None:
    registry, clock, seen = make()
    registry.register(reg(endpoint=None))
    count, revision = len(seen), registry.revision
    clock.advance(5)
    instance = registry.heartbeat("game", "game-1")
    assert instance.last_heartbeat == clock.time()
    assert (len(seen), registry.revision) == (count, revision)


def test_unknown_heartbeat_and_unregister_raise_not_found() -> None:
    registry, _, _ = make()
    with pytest.raises(InstanceNotFound):
        registry.heartbeat("game", "nope")
    with pytest.raises(InstanceNotFound):
        registry.unregister("game", "nope")
    with pytest.raises(ServiceNotFound):
        registry.instances("game")
    assert registry.healthy("game") == []


def test_registration_expires_after_the_ttl_without_heartbeats() -> None:
    registry, clock, seen = make(registration_ttl=10)
    registry.register(reg())
    clock.advance(9.9)
    registry.sweep()
    assert registry.get("game", "game-1") is not None
    clock.advance(0.2)
    registry.sweep()
    assert registry.get("game", "game-1") is None
    assert seen[-1].type is EventType.DELETE
    with pytest.raises(ServiceNotFound):
        registry.instances("game")


def test_heartbeats_and_reregistration_extend_the_ttl_but_probes_do_not() -> None:
    registry, clock, _ = make(registration_ttl=10)
    instance, _ = registry.register(reg())
    clock.advance(8)
    registry.heartbeat("game", "game-1")
    clock.advance(8)
    registry.register(reg())
    clock.advance(8)
    registry.record_health(instance, HealthStatus.HEALTHY, None)
    registry.sweep()
    assert registry.get("game", "game-1") is instance
    clock.advance(2.1)
    registry.sweep()
    assert registry.get("game", "game-1") is None


def test_sweep_reports_the_next_deadline() -> None:
    registry, clock, _ = make(registration_ttl=10, heartbeat_interval=2)
    registry.register(reg())
    clock.advance(1)
    registry.register(reg(instance="hb", endpoint=None))
    assert registry.sweep() == pytest.approx(clock.monotonic() + 4)  # 2 x 2 s grace


def test_heartbeat_only_instance_turns_unhealthy_after_two_intervals_and_back() -> None:
    registry, clock, seen = make(heartbeat_interval=5)
    registry.register(reg(endpoint=None))
    clock.advance(9.9)
    registry.sweep()
    assert registry.require("game", "game-1").status is HealthStatus.HEALTHY
    clock.advance(0.2)
    registry.sweep()
    assert registry.require("game", "game-1").status is HealthStatus.UNHEALTHY
    assert seen[-1].healthy_before
    assert not seen[-1].healthy_after
    registry.heartbeat("game", "game-1")
    assert registry.require("game", "game-1").status is HealthStatus.HEALTHY
    assert seen[-1].healthy_after


def test_severed_instances_turn_unhealthy_and_come_back_on_heartbeat() -> None:
    registry, _, seen = make()
    probes = Probes()
    registry.probes = probes
    beating, _ = registry.register(reg(instance="hb", endpoint=None))
    probed, _ = registry.register(reg(instance="probed"))
    registry.record_health(probed, HealthStatus.HEALTHY, None)
    registry.sever([beating.key, probed.key, ("game", "gone")])
    assert beating.status is HealthStatus.UNHEALTHY
    assert probed.status is HealthStatus.UNHEALTHY
    # A passing probe before any sign of life does not bring the probed one back.
    registry.record_health(probed, HealthStatus.HEALTHY, None)
    assert probed.status is HealthStatus.UNHEALTHY
    registry.heartbeat("game", "hb")
    assert status(beating) is HealthStatus.HEALTHY
    probes.soon.clear()
    registry.heartbeat("game", "probed")
    assert probes.soon == [probed.key]
    registry.record_health(probed, HealthStatus.HEALTHY, None)
    assert status(probed) is HealthStatus.HEALTHY
    assert seen[-1].healthy_after


def test_critical_load_with_hysteresis_and_only_when_healthy() -> None:
    registry, _, seen = make(critical_load_threshold=0.8, critical_load_hysteresis=0.05)
    registry.register(reg(endpoint=None))
    instance = registry.heartbeat("game", "game-1", 0.8)
    assert instance.critical_load
    assert seen[-1].instance.critical_load
    registry.heartbeat("game", "game-1", 0.76)
    assert instance.critical_load
    registry.heartbeat("game", "game-1", 0.74)
    assert not instance.critical_load
    assert not seen[-1].instance.critical_load
    registry.heartbeat("game", "game-1", 0.9)
    assert instance.critical_load
    registry.sever([instance.key])
    assert not instance.critical_load
    assert instance.load_percentage == 0.9


def test_limits_refuse_without_disturbing_what_is_registered() -> None:
    registry, _, _ = make(max_instances=3, max_instances_per_service=2)
    registry.register(reg(instance="a"))
    registry.register(reg(instance="b"))
    with pytest.raises(LimitExceeded):
        registry.register(reg(instance="c"))
    registry.register(reg(instance="a", port=1))  # updating an existing one is fine
    registry.register(reg(service="other", instance="x"))
    with pytest.raises(LimitExceeded):
        registry.register(reg(service="third", instance="y"))
    assert len(registry) == 3
    assert [i.instance_id for i in registry.instances("game")] == ["a", "b"]


def test_a_failing_listener_does_not_break_the_registry(caplog: pytest.LogCaptureFixture) -> None:
    registry, _, seen = make()

    def broken(change: Change) -> None:
        raise RuntimeError("boom")

    registry.subscribe(broken)
    registry.register(reg())
    assert registry.get("game", "game-1") is not None
    assert len(seen) == 1
    assert "listener" in caplog.text


def test_service_version_moves_on_every_touch() -> None:
    registry, _, _ = make()
    registry.register(reg(endpoint=None))
    version = registry.service_version("game")
    registry.heartbeat("game", "game-1")
    assert registry.service_version("game") > version
