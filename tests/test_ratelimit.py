"""Bounded logs for what clients can cause, and the memory trimmer's trigger."""

from __future__ import annotations

import logging

import pytest

from discovery import limits
from discovery.ratelimit import QuietFilter, RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_interval_then_a_count(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limited = RateLimitedLog(logging.getLogger("test.limited"), 10.0, clock)
    with caplog.at_level(logging.WARNING, "test.limited"):
        for _ in range(500):
            limited.warning("bad request from %s", "x")
        clock.now += 10
        limited.warning("bad request from %s", "x")
        limited.warning("another kind")
    assert [r.getMessage() for r in caplog.records] == [
        "bad request from x",
        "bad request from x (and 499 more like it in the last 10 s)",
        "another kind",
    ]


def test_foreign_records_lose_their_traceback_and_are_counted() -> None:
    clock = Clock()
    quiet = QuietFilter(5.0, clock=clock)
    try:
        raise ValueError("Unexpected DecodeError")
    except ValueError:
        import sys

        exc_info = sys.exc_info()

    def record() -> logging.LogRecord:
        return logging.LogRecord("grpc", logging.ERROR, "f", 1, "failed %s", ("call",), exc_info)

    first = record()
    assert quiet.filter(first)
    assert first.exc_info is None
    assert first.getMessage() == "failed call: ValueError: Unexpected DecodeError"
    assert not any(quiet.filter(record()) for _ in range(100))
    clock.now += 5
    later = record()
    assert quiet.filter(later)
    assert later.getMessage().endswith("(and 100 more like it in the last 5 s)")


async def test_the_trimmer_acts_only_once_many_descriptors_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counts = iter([30, 3000, 2900, 40, 45, 42])
    monkeypatch.setattr(limits, "open_descriptors", lambda: next(counts))
    trims: list[int] = []
    trimmer = limits.MemoryTrimmer(1.0)
    trimmer._trim = trims.append  # type: ignore[assignment]  # record instead of trimming
    outcomes = [await trimmer.check() for _ in range(6)]
    assert outcomes == [False, False, False, True, False, False]
    assert trims == [0]
