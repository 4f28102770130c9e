"""Process limits: the descriptor limit raised at start and shared between the two ports, and
memory handed back to the system once a flood of connections is gone.

Each connection holds a descriptor. Under the common `ulimit -n 1024` a flood of silent
connections used to exhaust them: new connections were reset and gRPC's accept loop logged
every second. The soft limit is raised to the hard one at start, and each port is capped well
below half of what is left after a reserve for everything else (probes, the store, the event
loop's own descriptors), so neither port can starve the other or the process.

glibc keeps freed memory in its arenas; after thousands of connections close, the process's
RSS stays where the flood left it. `MemoryTrimmer` notices the crowd has gone and hands the
memory back (`malloc_trim`, glibc only).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import logging
import os
import resource
from collections.abc import Callable

log = logging.getLogger("discovery")

#: Descriptors kept aside from the two ports' connection caps, beyond the probes' own.
RESERVED_DESCRIPTORS = 64


def raise_descriptor_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the soft limit in force after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20  # what Linux allows at most by default (fs.nr_open)
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return soft if soft != resource.RLIM_INFINITY else hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.warning("Cannot raise the descriptor limit from %d to %d: %s", soft, hard, exc)
        return soft
    return hard


def connection_cap(descriptors: int, wanted: int, probe_concurrency: int) -> int:
    """Connections allowed on each port: `wanted`, or less when the descriptors would not do."""
    spare = descriptors - RESERVED_DESCRIPTORS - probe_concurrency
    return max(8, min(wanted, spare // 2))


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    with contextlib.suppress(OSError, AttributeError):
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
        return trim
    return None


def open_descriptors() -> int | None:
    """How many descriptors the process holds (Linux), or None where it cannot tell."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


class MemoryTrimmer:
    """Hands memory back to the system once a crowd of connections has gone.

    Every `interval` seconds it counts the process's open descriptors (both ports' connections
    among them); when the count has fallen by `DROP` or more below its peak since the last
    trim, it collects garbage (closed connections leave reference cycles behind, and with the
    large young generation of `discovery.heap` a quiet server would not collect them for a long
    time) and calls glibc's `malloc_trim(0)` from a thread (ctypes releases the GIL), which
    returns free heap pages to the system. Nothing happens while the count holds or grows, so a
    steady server pays only for the count.
    """

    DROP = 256

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._trim = _malloc_trim()
        self._task: asyncio.Task[None] | None = None
        self._peak = 0

    def start(self) -> None:
        if self.interval > 0 and open_descriptors() is not None:
            self._task = asyncio.create_task(self._run(), name="memory-trim")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def check(self) -> bool:
        """Trim if the descriptor count fell enough since its peak; whether it trimmed."""
        count = open_descriptors() or 0
        if count >= self._peak:
            self._peak = count
            return False
        if self._peak - count < self.DROP:
            return False
        self._peak = count
        gc.collect()
        if self._trim is not None:
            await asyncio.to_thread(self._trim, 0)
        log.debug("Memory trimmed after connections closed (%d descriptors open)", count)
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.check()
