"""The probe scheduler and flap damping, driven by a fake clock and a fake prober.

Nothing here sleeps through an interval: each test moves the clock, calls `tick()` and lets the
probe tasks run to completion.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import pytest

from discovery.core.health.monitor import HealthMonitor
from discovery.core.health.probe import ProbeResult, ProbeTarget
from discovery.core.model import HealthStatus, Instance, Registration
from discovery.core.registry import Registry
from discovery.core.settings import Settings
from discovery.testing import FakeClock, eventually, test_settings

PASS = ProbeResult(True, "HTTP 200")
FAIL = ProbeResult.failure("HTTP 503")


@dataclass
class FakeProber:
    """Answers from `answers` (by port), PASS by default; a port in `hang` waits for release."""

    clock: FakeClock
    answers: dict[int, ProbeResult] = field(default_factory=dict)
    hang: dict[int, asyncio.Event] = field(default_factory=dict)
    calls: list[tuple[float, ProbeTarget]] = field(default_factory=list)
    broken: set[int] = field(default_factory=set)

    async def probe(self, target: ProbeTarget) -> ProbeResult:
        self.calls.append((self.clock.monotonic(), target))
        gate = self.hang.get(target.port)
        if gate is not None:
            await gate.wait()
        if target.port in self.broken:
            raise RuntimeError("prober bug")
        return self.answers.get(target.port, PASS)

    async def aclose(self) -> None:
        pass

    def ports(self) -> list[int]:
        return [target.port for _, target in self.calls]

    def times(self, port: int) -> list[float]:
        return [at for at, target in self.calls if target.port == port]


def status(instance: Instance) -> HealthStatus:
    """Read afresh, so that mypy does not keep an earlier assertion's narrowing."""
    return instance.status


@dataclass
class Rig:
    settings: Settings
    clock: FakeClock
    registry: Registry
    monitor: HealthMonitor
    prober: FakeProber

    def register(self, port: int, instance_id: str | None = None, **fields: Any) -> Instance:
        fields.setdefault("health_endpoint", "/health")
        registration = Registration(
            "game", instance_id or f"game-{port}", fields.pop("host", "127.0.0.1"), port, **fields
        )
        return self.registry.register(registration)[0]

    async def settle(self) -> None:
        for _ in range(6):
            await asyncio.sleep(0)

    async def tick(self) -> None:
        self.monitor.tick()
        await self.settle()

    async def run_for(self, seconds: float, step: float = 0.05) -> None:
        end = self.clock.monotonic() + seconds - 1e-9
        while self.clock.monotonic() < end:
            self.clock.advance(step)
            await self.tick()


@pytest.fixture
def make_rig() -> Any:
    def factory(**changes: Any) -> Rig:
        changes.setdefault("health_check_interval", 10.0)
        settings = test_settings(**changes)
        clock = FakeClock()
        registry = Registry(settings, clock)
        prober = FakeProber(clock)
        monitor = HealthMonitor(settings, registry, clock, prober)
        registry.probes = monitor
        return Rig(settings, clock, registry, monitor, prober)

    return factory


async def test_new_instance_is_probed_at_once(make_rig: Any) -> None:
    rig = make_rig()
    instance = rig.register(9001)
    assert instance.status is HealthStatus.UNKNOWN
    await rig.tick()
    assert rig.prober.ports() == [9001]
    assert status(instance) is HealthStatus.HEALTHY
    assert instance.last_health_check == rig.clock.time()


async def test_first_failure_of_an_unknown_instance_decides(make_rig: Any) -> None:
    rig = make_rig(health_check_failure_threshold=3)
    rig.prober.answers[9001] = FAIL
    instance = rig.register(9001)
    await rig.tick()
    assert instance.status is HealthStatus.UNHEALTHY


async def test_heartbeat_only_instances_are_never_probed(make_rig: Any) -> None:
    rig = make_rig()
    instance = rig.register(9001, health_endpoint=None)
    await rig.run_for(25)
    assert rig.prober.calls == []
    assert len(rig.monitor) == 0
    assert instance.status is HealthStatus.HEALTHY


async def test_probes_are_spread_over_the_interval(make_rig: Any) -> None:
    rig = make_rig(health_check_interval=10.0)
    for port in range(9000, 9100):
        rig.register(port)
    await rig.tick()
    assert len(rig.prober.calls) == 100  # all new: probed at once
    await rig.run_for(40, step=0.05)
    # From the second round on: about 10 probes in every second, none bunched up.
    per_second = Counter(int(at - 10_000) for at, _ in rig.prober.calls if at >= 10_015)
    assert len(per_second) == 25
    assert all(8 <= count <= 12 for count in per_second.values()), per_second
    for port in range(9000, 9100):
        times = rig.prober.times(port)
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        # The round after registration may be up to a quarter interval long; then once per 10s.
        assert gaps[0] <= 12.5 + 0.1
        assert all(9.9 <= gap <= 10.1 for gap in gaps[1:]), (port, gaps)
        assert len(times) >= 4


async def test_at_most_max_concurrency_in_flight(make_rig: Any) -> None:
    rig = make_rig(health_check_max_concurrency=5)
    gate = asyncio.Event()
    for port in range(9000, 9020):
        rig.prober.hang[port] = gate
        rig.register(port)
    await rig.tick()
    await rig.run_for(1)
    assert len(rig.prober.calls) == 5
    assert rig.monitor.in_flight == 5
    gate.set()
    await rig.settle()
    assert rig.monitor.in_flight == 0
    await rig.tick()
    assert len(rig.prober.calls) == 10
    await rig.run_for(0.5)
    assert len(rig.prober.calls) == 20
    assert len(set(rig.prober.ports())) == 20


async def test_a_hung_instance_delays_no_one(make_rig: Any) -> None:
    rig = make_rig(health_check_max_concurrency=2, health_check_interval=1.0)
    rig.prober.hang[9000] = asyncio.Event()  # never answers
    rig.register(9000)
    others = [rig.register(port) for port in range(9001, 9005)]
    await rig.run_for(10.0)
    assert rig.prober.times(9000) == [10_000.05]
    for instance in others:
        times = rig.prober.times(instance.port)
        assert len(times) >= 9, (instance.port, times)
        assert instance.status is HealthStatus.HEALTHY


async def test_a_failure_of_a_healthy_instance_is_rechecked_soon(make_rig: Any) -> None:
    rig = make_rig(health_check_interval=30.0, health_check_failure_threshold=2)
    instance = rig.register(9001)
    await rig.tick()
    assert instance.status is HealthStatus.HEALTHY
    rig.prober.answers[9001] = FAIL
    await rig.run_for(30.5)
    assert len(rig.prober.times(9001)) == 2
    assert instance.status is HealthStatus.HEALTHY
    await rig.run_for(1.5)
    times = rig.prober.times(9001)
    assert 0.9 <= times[2] - times[1] <= 1.1
    assert status(instance) is HealthStatus.UNHEALTHY


@pytest.mark.parametrize(("failures", "passes"), [(1, 1), (2, 1), (3, 2), (4, 3)])
async def test_thresholds(make_rig: Any, failures: int, passes: int) -> None:
    rig = make_rig(
        health_check_interval=1.0,
        health_check_failure_threshold=failures,
        health_check_success_threshold=passes,
    )
    instance = rig.register(9001)
    await rig.tick()
    assert instance.status is HealthStatus.HEALTHY
    rig.prober.answers[9001] = FAIL
    statuses = []
    for _ in range(failures):
        await _next_probe(rig, 9001)
        statuses.append(instance.status)
    assert statuses == [HealthStatus.HEALTHY] * (failures - 1) + [HealthStatus.UNHEALTHY]
    rig.prober.answers[9001] = PASS
    statuses = []
    for _ in range(passes):
        await _next_probe(rig, 9001)
        statuses.append(instance.status)
    assert statuses == [HealthStatus.UNHEALTHY] * (passes - 1) + [HealthStatus.HEALTHY]


async def test_one_pass_between_failures_resets_the_count(make_rig: Any) -> None:
    rig = make_rig(health_check_interval=1.0, health_check_failure_threshold=2)
    instance = rig.register(9001)
    await rig.tick()
    for answer in [FAIL, PASS, FAIL, PASS, FAIL]:
        rig.prober.answers[9001] = answer
        await _next_probe(rig, 9001)
        assert instance.status is HealthStatus.HEALTHY
    rig.prober.answers[9001] = FAIL
    await _next_probe(rig, 9001)
    assert instance.status is HealthStatus.UNHEALTHY


async def _next_probe(rig: Rig, port: int) -> None:
    count = len(rig.prober.times(port))
    for _ in range(1000):
        rig.clock.advance(0.05)
        await rig.tick()
        if len(rig.prober.times(port)) > count:
            return
    raise AssertionError("no probe within 50s")


async def test_result_for_an_unregistered_instance_is_dropped(make_rig: Any) -> None:
    rig = make_rig()
    gate = rig.prober.hang[9001] = asyncio.Event()
    rig.register(9001)
    await rig.tick()
    rig.registry.unregister("game", "game-9001")
    again = rig.register(9002, instance_id="game-9001")
    rig.prober.answers[9001] = FAIL
    await rig.tick()  # the new registration is probed at once, not after the stale probe
    assert rig.prober.ports() == [9001, 9002]
    assert again.status is HealthStatus.HEALTHY
    checked = again.last_health_check
    rig.clock.advance(0.5)
    gate.set()
    await rig.settle()
    assert again.status is HealthStatus.HEALTHY
    assert again.last_health_check == checked


async def test_result_for_a_moved_instance_is_dropped(make_rig: Any) -> None:
    rig = make_rig()
    gate = rig.prober.hang[9001] = asyncio.Event()
    instance = rig.register(9001)
    await rig.tick()
    rig.prober.answers[9001] = FAIL
    moved = rig.register(9005, instance_id="game-9001")
    assert moved is instance
    await rig.tick()
    assert rig.prober.ports() == [9001, 9005]
    assert instance.status is HealthStatus.HEALTHY
    gate.set()
    await rig.settle()
    assert instance.status is HealthStatus.HEALTHY
    # A result for the old endpoint after a new one was registered is dropped too; the
    # instance keeps its health at the same address until the new endpoint has answered.
    rig.prober.hang[9005] = gate = asyncio.Event()
    rig.clock.advance(20)
    await rig.tick()
    rig.prober.answers[9005] = FAIL
    rig.register(9005, instance_id="game-9001", health_endpoint="/ready")
    gate.set()
    await rig.settle()
    assert instance.status is HealthStatus.HEALTHY
    await rig.tick()
    assert rig.prober.calls[-1][1].path == "/ready"
    assert instance.status is HealthStatus.HEALTHY  # one failure: the stale one did not count
    await rig.run_for(2)
    assert status(instance) is HealthStatus.UNHEALTHY  # the recheck of /ready failed too


async def test_reregistering_at_the_same_address_keeps_health(make_rig: Any) -> None:
    rig = make_rig()
    instance = rig.register(9001)
    await rig.tick()
    rig.register(9001, metadata={"version": "2"})
    await rig.tick()
    assert instance.status is HealthStatus.HEALTHY
    assert rig.prober.ports() == [9001]


async def test_rate_cap_stretches_the_interval_with_one_warning(
    make_rig: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "discovery.health")
    rig = make_rig(health_check_interval=1.0, health_check_max_probes_per_second=20)
    for port in range(9000, 9100):
        rig.register(port)
    await rig.run_for(12)
    # The probes of new instances are held to the cap too: 20 per second, plus a burst of 2.
    first_second = [at for at, _ in rig.prober.calls if at < 10_001]
    assert 18 <= len(first_second) <= 22
    for port in range(9100, 9120):
        rig.register(port)
    await rig.run_for(24)
    assert rig.monitor.cycle() == pytest.approx(6.0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "HEALTH_CHECK_MAX_PROBES_PER_SECOND" in warnings[0].getMessage()
    window = [at for at, _ in rig.prober.calls if at >= rig.clock.monotonic() - 10]
    assert 190 <= len(window) <= 210  # 20 per second, never more
    per_second = Counter(int(at) for at in window)
    assert max(per_second.values()) <= 22
    times = rig.prober.times(9050)[-3:]
    assert all(5.5 <= later - earlier <= 6.5 for earlier, later in itertools.pairwise(times))
    # Below the cap and past it again: an INFO line each time, still one WARNING in all.
    for port in range(9000, 9110):
        rig.registry.unregister("game", f"game-{port}")
    await rig.run_for(2)
    for port in range(9000, 9100):
        rig.register(port)
    await rig.run_for(2)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("back to 1.0s" in message for message in messages)
    assert sum("HEALTH_CHECK_MAX_PROBES_PER_SECOND" in message for message in messages) == 2


async def test_an_invalid_load_is_logged_once_and_keeps_the_last_load(
    make_rig: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "discovery.health")
    rig = make_rig(health_check_interval=1.0)
    rig.prober.answers[9001] = ProbeResult(True, "HTTP 200", load=0.3)
    instance = rig.register(9001)
    await rig.tick()
    assert instance.load_percentage == 0.3
    rig.prober.answers[9001] = ProbeResult(True, "HTTP 200", bad_load="not a number: 'high'")
    await rig.run_for(10)
    assert len(rig.prober.times(9001)) >= 9
    assert instance.load_percentage == 0.3
    logged = [r for r in caplog.records if "load_percentage" in r.getMessage()]
    assert len(logged) == 1
    assert logged[0].levelno == logging.WARNING
    assert "game:game-9001" in logged[0].getMessage()


async def test_a_failed_probe_keeps_the_load(make_rig: Any) -> None:
    rig = make_rig(health_check_interval=1.0, health_check_failure_threshold=1)
    rig.prober.answers[9001] = ProbeResult(True, "HTTP 200", load=0.7)
    instance = rig.register(9001)
    await rig.tick()
    rig.prober.answers[9001] = FAIL
    await _next_probe(rig, 9001)
    assert instance.status is HealthStatus.UNHEALTHY
    assert instance.load_percentage == 0.7


async def test_critical_load_from_probes(make_rig: Any) -> None:
    rig = make_rig(health_check_interval=1.0, critical_load_threshold=0.8)
    changes: dict[str, list[bool]] = defaultdict(list)
    rig.registry.subscribe(
        lambda c: changes[c.instance.instance_id].append(c.instance.critical_load)
    )
    instance = rig.register(9001)
    for load, critical in [(0.5, False), (0.85, True), (0.77, True), (0.74, False)]:
        rig.prober.answers[9001] = ProbeResult(True, "HTTP 200", load=load)
        await _next_probe(rig, 9001)
        assert (instance.load_percentage, instance.critical_load) == (load, critical)
    assert changes["game-9001"].count(True) >= 2


async def test_a_broken_prober_fails_one_probe_only(make_rig: Any) -> None:
    rig = make_rig(health_check_interval=1.0)
    rig.prober.broken.add(9001)
    broken = rig.register(9001)
    fine = rig.register(9002)
    await rig.run_for(3)
    assert broken.status is HealthStatus.UNHEALTHY
    assert fine.status is HealthStatus.HEALTHY
    assert len(rig.prober.times(9001)) >= 3


async def test_a_heartbeat_after_a_broken_stream_is_probed_at_once(make_rig: Any) -> None:
    rig = make_rig(health_check_interval=30.0)
    instance = rig.register(9001)
    await rig.tick()
    rig.registry.sever([instance.key])
    assert instance.status is HealthStatus.UNHEALTHY
    rig.clock.advance(5)
    await rig.tick()
    assert len(rig.prober.calls) == 1
    rig.registry.heartbeat("game", "game-9001")
    await rig.tick()
    assert len(rig.prober.calls) == 2
    assert status(instance) is HealthStatus.HEALTHY


async def test_unregistered_instances_leave_the_schedule(make_rig: Any) -> None:
    rig = make_rig(health_check_interval=1.0)
    for port in range(9000, 9010):
        rig.register(port)
    await rig.run_for(2)
    for port in range(9000, 9010):
        rig.registry.unregister("game", f"game-{port}")
    assert len(rig.monitor) == 0
    count = len(rig.prober.calls)
    await rig.run_for(5)
    assert len(rig.prober.calls) == count


async def test_a_probe_asked_for_during_a_probe_follows_it(make_rig: Any) -> None:
    rig = make_rig(health_check_interval=30.0)
    gate = rig.prober.hang[9001] = asyncio.Event()
    instance = rig.register(9001)
    await rig.tick()
    rig.registry.sever([instance.key])
    rig.registry.heartbeat("game", "game-9001")  # asks for a probe while one is in flight
    await rig.run_for(0.5)
    assert len(rig.prober.calls) == 1
    gate.set()
    await rig.settle()
    await rig.tick()
    assert len(rig.prober.calls) == 2
    assert instance.status is HealthStatus.HEALTHY
    await rig.run_for(31)
    assert len(rig.prober.calls) == 3  # and it keeps its turn on the wheel


async def test_the_run_loop_survives_a_failing_step(
    make_rig: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rig = make_rig()
    schedule = rig.monitor._schedule
    take = schedule.take
    failures = iter([RuntimeError("bug")])

    def flaky(now: float, free: int) -> Any:
        for failure in failures:
            raise failure
        return take(now, free)

    monkeypatch.setattr(schedule, "take", flaky)
    task = asyncio.create_task(rig.monitor.run())
    try:
        instance = rig.register(9001)
        await eventually(lambda: instance.status is HealthStatus.HEALTHY)
        assert "Health monitor step failed" in caplog.text
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
