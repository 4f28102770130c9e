"""Active health checking: probe every instance that has a health endpoint, damp flapping.

`ProbeSchedule` decides when each instance is probed (spread over the interval, urgent probes
first, held to the rate cap). The monitor runs each probe in its own task with a deadline, at
most `HEALTH_CHECK_MAX_CONCURRENCY` at a time, so a hung instance holds one slot for one timeout
and delays no one else.

Damping: consecutive passes and failures are counted per instance, and the registry's status
decides what they mean (`unknown`: the first answer decides; `healthy`: the failure threshold
must be reached, with a quick recheck in between; `unhealthy`: the success threshold).

`tick()` does one scheduling step on the `Clock` and never awaits, so the tests drive the
monitor with a fake clock and a fake `Prober` instead of sleeping through intervals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from discovery.core.clock import Clock
from discovery.core.health.probe import HttpProber, Prober, ProbeResult, ProbeTarget
from discovery.core.health.schedule import ProbeSchedule, Slot
from discovery.core.metrics import FAILED, PASSED, TIMED_OUT, Metrics
from discovery.core.model import HealthStatus, Instance
from discovery.core.registry import Key, Registry
from discovery.core.settings import Settings

log = logging.getLogger("discovery.health")

#: A failure of a healthy instance (or a pass of an unhealthy one) below its threshold is
#: checked again this soon (or after one interval, when that is shorter).
RECHECK_DELAY = 1.0
#: Extra time a probe gets past the probe timeout before the monitor gives up on the prober.
DEADLINE_SLACK = 1.0
#: Pause after a scheduling step failed, before the next try.
RETRY_AFTER_ERROR = 0.1


@dataclass(eq=False, slots=True, kw_only=True)
class _Target(Slot):
    """One instance as the monitor sees it; replaced whenever its address or endpoint moves."""

    instance: Instance
    probe: ProbeTarget
    passes: int = 0
    failures: int = 0
    bad_load_logged: bool = False


def probe_target(instance: Instance) -> ProbeTarget:
    """Where `instance` is probed (it must have a health endpoint)."""
    assert instance.health_endpoint is not None
    return ProbeTarget(instance.host, instance.port, instance.health_endpoint)


class HealthMonitor:
    """Probes every instance that has a health endpoint and records the outcome in the registry.

    It is the registry's `ProbeTargets`: the registry calls `probe_soon` and `drop`.
    """

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        clock: Clock,
        prober: Prober | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics or Metrics()
        self._registry = registry
        self._clock = clock
        self._prober = prober
        self._schedule: ProbeSchedule[_Target] = ProbeSchedule(
            settings.health_check_interval, settings.health_check_max_probes_per_second
        )
        self._concurrency = settings.health_check_max_concurrency
        self._recheck = min(RECHECK_DELAY, settings.health_check_interval)
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._in_flight = 0

    # -- what the registry calls ------------------------------------------------------------

    def probe_soon(self, instance: Instance) -> None:
        """Probe `instance` at once; a new address or endpoint starts its counts afresh."""
        probe = probe_target(instance)
        target = self._schedule.get(instance.key)
        if target is None or target.instance is not instance or target.probe != probe:
            target = _Target(key=instance.key, instance=instance, probe=probe)
            self._schedule.add(target)
        self._request(target, self._clock.monotonic())

    def drop(self, key: Key) -> None:
        """Stop probing `key`; a result still in flight for it will be ignored."""
        self._schedule.discard(key)

    def probing(self, key: Key) -> bool:
        """Whether `key` is on the schedule."""
        return self._schedule.get(key) is not None

    # -- running ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._schedule)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def cycle(self) -> float:
        """Seconds between two probes of the same instance (the interval, or stretched)."""
        return self._schedule.cycle()

    def tick(self) -> float:
        """Send every probe that is due now; returns how long to wait before the next step."""
        now = self._clock.monotonic()
        for target in self._schedule.take(now, self._concurrency - self._in_flight):
            self._launch(target)
        return self._schedule.next_delay(now)

    async def run(self) -> None:
        """Probe until cancelled, then stop the probes in flight and close the prober."""
        owned = self._prober is None
        if self._prober is None:
            self._prober = HttpProber(self._settings.health_check_timeout, self._concurrency)
        try:
            while True:
                self._wake.clear()
                delay = self._step()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
        finally:
            await self._stop(owned)

    def _step(self) -> float:
        try:
            return self.tick()
        except Exception:  # a scheduling bug must not end health checking for good
            log.exception("Health monitor step failed")
            return RETRY_AFTER_ERROR

    async def _stop(self, owned: bool) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1.0)
        if owned and self._prober is not None:
            await self._prober.aclose()

    def _request(self, target: _Target, due: float) -> None:
        if self._schedule.request(target, due):
            self._wake.set()

    # -- probing ------------------------------------------------------------------------------

    def _launch(self, target: _Target) -> None:
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._probe(target))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _probe(self, target: _Target) -> None:
        # Real elapsed time, whatever clock drives the schedule: this is a measurement.
        started = time.perf_counter()
        try:
            result = await self._send(target.probe)
        finally:
            # Wake the scheduler when this probe is wanted again or freed the last slot.
            if self._schedule.finished(target) or self._in_flight == self._concurrency:
                self._wake.set()
            self._in_flight -= 1
        self._count(result, time.perf_counter() - started)
        self._apply(target, result)

    def _count(self, result: ProbeResult, elapsed: float) -> None:
        metrics = self._metrics
        outcome = PASSED if result.passed else TIMED_OUT if result.timed_out else FAILED
        metrics.probes[outcome] += 1
        metrics.probe_duration.observe(elapsed)

    async def _send(self, probe: ProbeTarget) -> ProbeResult:
        assert self._prober is not None
        try:
            async with asyncio.timeout(self._settings.health_check_timeout + DEADLINE_SLACK):
                return await self._prober.probe(probe)
        except TimeoutError:
            return ProbeResult.timeout("timed out")
        except Exception as exc:  # a prober bug must fail one probe, not stop the monitor
            log.exception("Probe of %s failed unexpectedly", probe.url)
            return ProbeResult.failure(f"probe error: {exc!r}")

    # -- outcomes -----------------------------------------------------------------------------

    def _apply(self, target: _Target, result: ProbeResult) -> None:
        """Record `result`, unless the instance went away or moved while it was probed."""
        instance = target.instance
        if not self._schedule.current(target) or self._registry.get(*instance.key) is not instance:
            return
        if instance.health_endpoint is None or probe_target(instance) != target.probe:
            return
        before = instance.status
        status = self._judge(target, before, result.passed)
        self._registry.record_health(instance, status, self._load(target, result))
        if instance.status is not before:
            level = logging.DEBUG if before is HealthStatus.UNKNOWN else logging.INFO
            log.log(
                level,
                "%s:%s is %s (%s)",
                *instance.key,
                instance.status.value,
                result.reason,
            )

    def _judge(self, target: _Target, status: HealthStatus, passed: bool) -> HealthStatus | None:
        """The status this answer calls for, or None to leave it as it is."""
        if passed:
            target.failures, target.passes = 0, target.passes + 1
            count, threshold = target.passes, self._settings.health_check_success_threshold
            verdict, settled = HealthStatus.HEALTHY, status is HealthStatus.HEALTHY
        else:
            target.passes, target.failures = 0, target.failures + 1
            count, threshold = target.failures, self._settings.health_check_failure_threshold
            verdict, settled = HealthStatus.UNHEALTHY, status is HealthStatus.UNHEALTHY
        if settled:
            return None
        if status is HealthStatus.UNKNOWN or count >= threshold:
            return verdict
        # Below the threshold: confirm soon rather than a whole interval later.
        self._request(target, self._clock.monotonic() + self._recheck)
        return None

    def _load(self, target: _Target, result: ProbeResult) -> float | None:
        """The load to record: only from a pass, and an unusable one is logged once."""
        if not result.passed:
            return None
        if result.bad_load is not None:
            if not target.bad_load_logged:
                target.bad_load_logged = True
                instance = target.instance
                log.warning(
                    "%s:%s reported an unusable load_percentage (%s); keeping %.2f",
                    *instance.key,
                    result.bad_load,
                    instance.load_percentage,
                )
            return None
        if result.load is not None:
            target.bad_load_logged = False
        return result.load
