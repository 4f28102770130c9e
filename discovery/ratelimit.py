"""Log lines a client can cause, bounded: at most one line per kind per interval, with a count.

Anything a remote peer can trigger at will (a malformed request, a connection refused at the
cap, an error inside gRPC's own request handling) must not let that peer grow the log at the
rate it sends. `RateLimitedLog` logs the first occurrence of each message in an interval and
counts the rest; the next line logged for that message says how many were held back.
`QuietFilter` does the same to the records of loggers we do not own (grpc's), and drops their
tracebacks: a client's bad request is not our stack.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class _Window:
    """Per message: when it was last let through, and how many were held back since."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last: dict[object, float] = {}
        self._held: dict[object, int] = {}

    def admit(self, key: object) -> int | None:
        """None when this occurrence is held back; else how many were held back before it."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        if len(self._last) > 1000:  # the keys are message templates: few; bound them anyway
            self._last.clear()
        self._last[key] = now
        return self._held.pop(key, 0)


def _suffix(held: int, interval: float) -> str:
    return f" (and {held} more like it in the last {interval:g} s)" if held else ""


class RateLimitedLog:
    """A logger's lines at most once per `interval` each (keyed by the format string)."""

    def __init__(
        self, logger: logging.Logger, interval: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self._window = _Window(interval, clock)

    def warning(self, message: str, *args: object) -> None:
        self.log(logging.WARNING, message, *args)

    def log(self, level: int, message: str, *args: object) -> None:
        if not self.logger.isEnabledFor(level):
            return
        held = self._window.admit(message)
        if held is not None:
            self.logger.log(level, message + _suffix(held, self._window.interval), *args)


class QuietFilter(logging.Filter):
    """For loggers we do not own: one record per message and interval, without its traceback
    unless `tracebacks` (uvicorn's are of our own application's errors: worth keeping)."""

    def __init__(
        self, interval: float, tracebacks: bool = False, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self._window = _Window(interval, clock)
        self._tracebacks = tracebacks

    def filter(self, record: logging.LogRecord) -> bool:
        held = self._window.admit((record.name, record.msg))
        if held is None:
            return False
        message = record.getMessage()
        if not self._tracebacks and record.exc_info:
            error = record.exc_info[1]
            if error is not None:
                message = f"{message}: {type(error).__name__}: {error}"
            record.exc_info = None
            record.exc_text = None
            record.stack_info = None
        record.msg = message + _suffix(held, self._window.interval)
        record.args = None
        return True


#: The loggers of libraries that log, per request, errors a client can provoke (True: keep
#: tracebacks).
QUIETED_LOGGERS = {
    "grpc._cython.cygrpc": False,
    "grpc._server": False,
    "grpc.aio._server": False,
    "uvicorn.error": True,
}


def quiet_foreign_loggers(interval: float) -> None:
    """Bound what grpc's and uvicorn's per-request error logs can write."""
    for name, tracebacks in QUIETED_LOGGERS.items():
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, QuietFilter)]:
            logger.removeFilter(old)
        logger.addFilter(QuietFilter(interval, tracebacks))
