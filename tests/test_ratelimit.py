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
    monkeypatch.setattr(limits, "resident", lambda: None)
    trims: list[int] = []
    trimmer = limits.MemoryTrimmer(1.0)
    trimmer._trim = trims.append  # type: ignore[assignment]  # record instead of trimming
    outcomes = [await trimmer.check() for _ in range(6)]
    assert outcomes == [False, False, False, True, False, False]
    assert trims == [0]


async def test_the_trimmer_acts_when_the_process_grew_and_its_heap_holds_free_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A flood that came and went between two checks leaves the descriptor count unchanged:
    the growth of the resident set with a heap full of free memory is what shows it."""
    mb = 1 << 20
    monkeypatch.setattr(limits, "open_descriptors", lambda: 30)
    sizes = iter([80 * mb, 81 * mb, 130 * mb, 100 * mb, 104 * mb, 140 * mb])
    frees = iter([1 * mb, 1 * mb, 40 * mb, 40 * mb, 2 * mb])
    monkeypatch.setattr(limits, "resident", lambda: next(sizes))
    monkeypatch.setattr(limits, "heap_free", lambda: next(frees))
    trims: list[int] = []
    trimmer = limits.MemoryTrimmer(1.0)
    trimmer._trim = trims.append  # type: ignore[assignment]  # record instead of trimming
    # 80 MB: where it settles; 81: no growth; 130 with 40 MB free: trim, settles at 100;
    # 104: not grown enough; 140 but only 2 MB free: the growth is live data, no trim.
    outcomes = [await trimmer.check() for _ in range(5)]
    assert outcomes == [False, False, True, False, False]
    assert trims == [0]


def test_the_heap_and_resident_readings_are_real_on_linux() -> None:
    size, free = limits.resident(), limits.heap_free()
    assert size is not None
    assert size > 1 << 20
    assert free is not None
    assert free >= 0
