"""The process's own load: the share of CPU time it used over the last few seconds, in 0..1."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable


class ProcessLoad:
    """Samples process CPU time once per `tick` seconds; `value()` covers the last `window`.

    `wall` and `cpu` are the clocks it reads (monotonic time and process CPU time by default).
    """

    def __init__(
        self,
        window: float = 5.0,
        tick: float = 1.0,
        wall: Callable[[], float] = time.monotonic,
        cpu: Callable[[], float] = time.process_time,
    ) -> None:
        self._tick = tick
        self._wall = wall
        self._cpu = cpu
        self._samples: deque[tuple[float, float]] = deque(maxlen=max(2, int(window / tick) + 1))
        self._sample()

    def _sample(self) -> None:
        self._samples.append((self._wall(), self._cpu()))

    def value(self) -> float:
        """CPU seconds used per wall second over the window, capped at 1."""
        wall_then, cpu_then = self._samples[0]
        wall, cpu = self._wall(), self._cpu()
        if wall - wall_then <= 0:
            return 0.0
        return round(min(1.0, max(0.0, (cpu - cpu_then) / (wall - wall_then))), 4)

    async def run(self) -> None:
        """Keep sampling until cancelled."""
        while True:
            await asyncio.sleep(self._tick)
            self._sample()
