"""Process limits: the descriptor limit raised at start and shared between the two ports, and
memory handed back to the system once a flood of connections is gone.

Each connection holds a descriptor. Under the common `ulimit -n 1024` a flood of silent
connections used to exhaust them: new connections were reset and gRPC's accept loop logged
every second. The soft limit is raised to the hard one at start, and each port is capped well
below half of what is left after a reserve for everything else (probes, the store, the event
loop's own descriptors), so neither port can starve the other or the process.

glibc keeps freed memory in its arenas; after thousands of connections close, the process's
RSS stays where the flood left it. `MemoryTrimmer` calls `malloc_trim(0)` from a thread now and
then, which hands free pages back to the system (a no-op elsewhere than glibc).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
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


class MemoryTrimmer:
    """Every `interval` seconds, hand free heap pages back to the system (glibc only).

    `malloc_trim` walks the heap's free chunks: a few milliseconds on a large heap, run in a
    thread (ctypes releases the GIL), so the event loop does not wait for it.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._trim = _malloc_trim() if interval > 0 else None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._trim is not None:
            self._task = asyncio.create_task(self._run(), name="memory-trim")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        trim = self._trim
        assert trim is not None
        while True:
            await asyncio.sleep(self.interval)
            await asyncio.to_thread(trim, 0)
