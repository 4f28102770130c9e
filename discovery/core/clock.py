"""The time seam: the registry, monitor and alerts read time only through a `Clock`."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """Wall time for timestamps, monotonic time for deadlines."""

    def time(self) -> float:
        """UNIX seconds."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...


class SystemClock:
    """The real clock."""

    __slots__ = ()

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


def iso8601(timestamp: float) -> str:
    """UNIX seconds as ISO 8601 in UTC with an explicit offset (`...T17:25:13.858182+00:00`)."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat()
