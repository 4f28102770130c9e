"""Process limits: the descriptor limit raised at start and shared between the two ports, and
memory handed back to the system once a flood of connections is gone.

Each connection holds a descriptor. Under the common `ulimit -n 1024` a flood of silent
connections used to exhaust them: new connections were reset and gRPC's accept loop logged
every second. The soft limit is raised to the hard one at start, and each port is capped well
below half of what is left after a reserve for everything else (probes, the store, the event
loop's own descriptors), so neither port can starve the other or the process.

glibc keeps freed memory in its arenas; after thousands of connections close, the process's
RSS stays where the flood left it. `MemoryTrimmer` notices the crowd has gone (or that the heap
holds much free memory the process grew by) and hands the memory back (`malloc_trim`, glibc
only).
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


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    with contextlib.suppress(OSError):
        return ctypes.CDLL(name)
    return None


_LIBC = _libc()


def _malloc_trim() -> Callable[[int], int] | None:
    with contextlib.suppress(AttributeError):
        if _LIBC is not None:
            trim: Callable[[int], int] = _LIBC.malloc_trim
            return trim
    return None


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            *("arena", "ordblks", "smblks", "hblks", "hblkhd"),
            *("usmblks", "fsmblks", "uordblks", "fordblks", "keepcost"),
        )
    ]


def _mallinfo2() -> Callable[[], _MallInfo2] | None:
    with contextlib.suppress(AttributeError):  # glibc 2.33 and later
        if _LIBC is not None:
            info: Callable[[], _MallInfo2] = _LIBC.mallinfo2
            info.restype = _MallInfo2  # type: ignore[attr-defined]  # ctypes function attribute
            return info
    return None


_MALLINFO2 = _mallinfo2()


def heap_free() -> int | None:
    """Bytes the C heap holds free, in every arena (glibc), or None where it cannot tell."""
    if _MALLINFO2 is None:
        return None
    return int(_MALLINFO2().fordblks)


def resident() -> int | None:
    """The process's resident set in bytes (Linux), or None where it cannot tell."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
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
    returns free heap pages to the system.

    A flood that opens and closes between two checks never shows in the descriptor count, so
    each check also reads the resident set and glibc's free heap bytes: when the process grew by
    `SLACK` or more since the last trim (or the first check) and the heap holds at least `SLACK`
    free, it trims too (without the collection). Nothing happens while the process holds steady,
    so a steady server pays only for the counts.
    """

    DROP = 256
    SLACK = 8 << 20

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._trim = _malloc_trim()
        self._task: asyncio.Task[None] | None = None
        self._peak = 0
        self._settled: int | None = None  # resident bytes after the last trim (or first check)

    def start(self) -> None:
        if self.interval > 0 and open_descriptors() is not None:
            self._settled = resident()  # a flood before the first check counts as growth
            self._task = asyncio.create_task(self._run(), name="memory-trim")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def check(self) -> bool:
        """Trim if the descriptor count fell enough since its peak, or the process grew and its
        heap holds much free memory; whether it trimmed."""
        count = open_descriptors() or 0
        dropped = self._peak - count >= self.DROP
        self._peak = count if dropped else max(self._peak, count)
        if dropped:
            gc.collect()
        elif not self._grown_with_free_heap():
            return False
        if self._trim is not None:
            await asyncio.to_thread(self._trim, 0)
        self._settled = resident()
        log.debug("Memory trimmed (%d descriptors open)", count)
        return True

    def _grown_with_free_heap(self) -> bool:
        size, free = resident(), heap_free()
        if size is None or free is None:
            return False
        if self._settled is None:
            self._settled = size
            return False
        return size - self._settled >= self.SLACK and free >= self.SLACK

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.check()
