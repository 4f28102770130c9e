"""When to probe: a wheel that spreads probes over the interval, urgent probes, and a rate cap.

Every target sits on a wheel that turns at `n / cycle` positions per second, so each one comes
round once per cycle and the probes are spread evenly instead of bursting every interval. The
cycle is the probe interval, stretched to `n / max_rate` when the fleet is too large for the
rate cap (one WARNING says so). Urgent probes (a new or moved instance, a recheck) jump the
wheel. A token bucket holds all probes, urgent ones included, to the rate cap.

The schedule only decides; it never awaits and reads time from its caller, so it runs the same
under a fake clock.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger("discovery.health")

Key = tuple[str, str]

#: The finest scheduling step: probes due within one step go out together.
TICK = 0.01
#: The longest sleep between two steps when nothing is due.
IDLE = 1.0
#: Share of the rate cap that may go out at once (after a quiet spell).
BURST = 0.1


@dataclass(eq=False, slots=True, kw_only=True)
class Slot:
    """One probe target's place in the schedule."""

    key: Key
    last_start: float = -math.inf
    in_flight: bool = False
    urgent_due: float | None = None


S = TypeVar("S", bound=Slot)


class ProbeSchedule(Generic[S]):
    """The current target of each key, and which of them to probe when."""

    def __init__(self, interval: float, max_rate: float) -> None:
        self._interval = interval
        self._max_rate = max_rate
        self._burst = max(1.0, max_rate * BURST)
        self._slots: dict[Key, S] = {}
        self._wheel: deque[S] = deque()
        self._urgent: list[tuple[float, int, S]] = []
        self._order = itertools.count()
        self._tokens = self._burst
        self._owed = 0.0
        self._last: float | None = None
        self._stretched = False
        self._warned = False

    def __len__(self) -> int:
        return len(self._slots)

    def get(self, key: Key) -> S | None:
        return self._slots.get(key)

    def current(self, slot: S) -> bool:
        """Whether `slot` is still the target of its key (not removed, not replaced)."""
        return self._slots.get(slot.key) is slot

    def add(self, slot: S) -> None:
        """Make `slot` the target of its key, replacing any older one."""
        self._slots[slot.key] = slot
        # At the back of the wheel: its turn comes one cycle from now.
        self._wheel.append(slot)

    def discard(self, key: Key) -> None:
        # The wheel and the urgent queue forget it lazily, when they reach it.
        self._slots.pop(key, None)

    def request(self, slot: S, due: float) -> bool:
        """Probe `slot` at `due` at the latest; True when that is sooner than planned."""
        if slot.urgent_due is not None and slot.urgent_due <= due:
            return False
        slot.urgent_due = due
        heapq.heappush(self._urgent, (due, next(self._order), slot))
        return True

    def finished(self, slot: S) -> bool:
        """A probe of `slot` ended; True when it is wanted again at once."""
        slot.in_flight = False
        if slot.urgent_due is None:
            return False
        heapq.heappush(self._urgent, (slot.urgent_due, next(self._order), slot))
        return True

    def cycle(self) -> float:
        """Seconds between two turns of the same target, stretched past the rate cap."""
        return max(self._interval, len(self._slots) / self._max_rate)

    def take(self, now: float, free: int) -> list[S]:
        """The targets to probe now, at most `free`; each is marked in flight."""
        self._refill(now)
        taken: list[S] = []
        self._take_urgent(now, free, taken)
        self._take_wheel(now, free, taken)
        return taken

    def next_delay(self, now: float) -> float:
        """How long until something may be due (a probe request wakes the caller sooner)."""
        delay = IDLE
        if self._urgent:
            delay = min(delay, self._urgent[0][0] - now)
        rate = self._wheel_rate()
        if rate > 0:
            delay = min(delay, (1.0 - self._owed) / rate)
        if self._tokens < 1.0:
            delay = max(delay, (1.0 - self._tokens) / self._max_rate)
        return max(TICK, delay)

    def _refill(self, now: float) -> None:
        elapsed = 0.0 if self._last is None else max(0.0, now - self._last)
        self._last = now
        self._tokens = min(self._burst, self._tokens + elapsed * self._max_rate)
        rate = self._wheel_rate()
        # Turns missed while every slot was busy are not made up in a burst later.
        self._owed = min(self._owed + elapsed * rate, max(1.0, rate))

    def _can_take(self, free: int, taken: list[S]) -> bool:
        return len(taken) < free and self._tokens >= 1.0

    def _give(self, slot: S, now: float, taken: list[S]) -> None:
        self._tokens -= 1.0
        slot.in_flight = True
        slot.last_start = now
        taken.append(slot)

    def _take_urgent(self, now: float, free: int, taken: list[S]) -> None:
        while self._urgent and self._urgent[0][0] <= now and self._can_take(free, taken):
            due, _, slot = heapq.heappop(self._urgent)
            if slot.urgent_due != due or not self.current(slot):
                continue
            if slot.in_flight:
                continue  # queued again by `finished`
            slot.urgent_due = None
            self._give(slot, now, taken)

    def _take_wheel(self, now: float, free: int, taken: list[S]) -> None:
        # A target probed within the last quarter cycle (just registered, or rechecked) lets
        # its turn pass: after a mass registration the first round is then at most a quarter
        # cycle longer than the others, and costs at most 3/4 of a round in extra probes.
        recent = now - self.cycle() / 4
        while self._owed >= 1.0 and self._wheel:
            slot = self._wheel[0]
            if not self.current(slot):
                self._wheel.popleft()
                continue
            due = not slot.in_flight and slot.urgent_due is None and slot.last_start <= recent
            if due and not self._can_take(free, taken):
                return
            self._wheel.rotate(-1)
            self._owed -= 1.0
            if due:
                self._give(slot, now, taken)

    def _wheel_rate(self) -> float:
        count = len(self._slots)
        if count == 0:
            return 0.0
        self._note_stretch(count)
        return count / self.cycle()

    def _note_stretch(self, count: int) -> None:
        stretched = count / self._interval > self._max_rate
        if stretched == self._stretched:
            return
        self._stretched = stretched
        if not stretched:
            log.info("Probe interval back to %ss", self._interval)
            return
        # One WARNING per process: a fleet hovering around the cap must not flood the log.
        level = logging.INFO if self._warned else logging.WARNING
        self._warned = True
        log.log(
            level,
            "Probing %d instances every %ss would exceed HEALTH_CHECK_MAX_PROBES_PER_SECOND"
            " (%s): each instance is probed every %.1fs instead",
            count,
            self._interval,
            self._max_rate,
            self.cycle(),
        )
