"""Fan-out rounds: the pause after a round grows with the loop's work during the round, up to a
bound."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from discovery.core.watch import rounds
from discovery.core.watch.rounds import FanoutRounds


class _Loop:
    """Just what `FanoutRounds` uses of a loop: the time, and the calls it arms."""

    def __init__(self) -> None:
        self.now = 100.0
        self.cpu = 5.0  # the CPU time of the loop's thread
        self.later: list[tuple[float, Callable[[], None]]] = []
        self.soon: list[Callable[[], None]] = []

    def time(self) -> float:
        return self.now

    def call_soon(self, callback: Callable[[], None]) -> Any:
        self.soon.append(callback)
        return _Handle()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Any:
        self.later.append((delay, callback))
        return _Handle()


class _Handle:
    def cancel(self) -> None:
        pass


class _Feed:
    def __init__(self, watcher: object) -> None:
        self.scheduled = False
        self.watcher = watcher

    def release(self, round_id: int) -> list[object]:
        self.scheduled = False
        return [self.watcher]


def _one_round(
    fanout: FanoutRounds, loop: _Loop, length: float, busy: float | None = None
) -> float:
    """Run a round that lasts `length` s, `busy` of them working (all by default); the delay
    armed for the next one."""
    watcher = object()
    fanout.schedule(_Feed(watcher), loop)  # type: ignore[arg-type]  # a fake loop
    start = loop.soon.pop() if loop.soon else loop.later.pop()[1]
    start()
    loop.later.clear()  # the round's limit timer
    loop.now += length
    loop.cpu += length if busy is None else busy
    fanout.schedule(_Feed(object()), loop)  # type: ignore[arg-type]  # queued meanwhile
    fanout.finished(watcher, fanout.round_id)
    delay, _ = loop.later[-1]
    return delay


def test_the_pause_after_a_round_is_twice_its_length_up_to_the_bound() -> None:
    loop = _Loop()
    fanout = FanoutRounds(lambda: loop.cpu)
    assert abs(_one_round(fanout, loop, 0.05) - rounds.GAP * 0.05) < 1e-9
    loop.later.clear()
    loop.now += 1.0  # the pending round ran later; start afresh
    fanout = FanoutRounds(lambda: loop.cpu)
    assert abs(_one_round(fanout, loop, 0.2) - rounds.MAX_GAP) < 1e-9  # not 2 x 0.2
    assert 2 * rounds.ROUND_LIMIT + rounds.MAX_GAP < 1.0  # the worst wait of a change


def test_a_round_spent_waiting_for_its_writes_pauses_only_for_the_work_it_took() -> None:
    loop = _Loop()
    fanout = FanoutRounds(lambda: loop.cpu)
    # One stream: 2 ms until its write completed, 0.2 ms of it the loop's own work.
    delay = _one_round(fanout, loop, 0.002, busy=0.0002)
    assert abs(delay - rounds.GAP * 0.0002) < 1e-9  # not GAP x 2 ms


def _after_a_round_then(
    loop: _Loop,
    fanout: FanoutRounds,
    quiet: float,
    working: float,
    length: float = 0.04,
    busy: float = 0.04,
) -> None:
    """A round of `length` s (`busy` of them working) with nothing queued meanwhile, then
    `quiet` s in which the loop worked `working` s, then a change."""
    watcher = object()
    fanout.schedule(_Feed(watcher), loop)  # type: ignore[arg-type]  # a fake loop
    loop.soon.pop()()
    loop.later.clear()  # the round's limit timer
    loop.now += length
    loop.cpu += busy
    fanout.finished(watcher, fanout.round_id)  # the gap runs to GAP x busy after the round
    loop.now += quiet
    loop.cpu += working
    fanout.schedule(_Feed(object()), loop)  # type: ignore[arg-type]


def test_a_lone_change_after_a_quiet_round_goes_out_at_once() -> None:
    loop = _Loop()
    fanout = FanoutRounds(lambda: loop.cpu)
    # One stream: 2 ms until its write completed, 0.2 ms of it the loop's work; the next change
    # comes 1 ms later, past the 0.4 ms gap (a gap of twice the round would be 4 ms), with the
    # loop busy all that millisecond (so it is the gap, not the idle spell, that lets it go).
    _after_a_round_then(loop, fanout, quiet=0.001, working=0.001, length=0.002, busy=0.0002)
    assert len(loop.soon) == 1
    assert not loop.later


def test_a_change_after_an_idle_spell_does_not_wait_out_the_gap() -> None:
    loop = _Loop()
    fanout = FanoutRounds(lambda: loop.cpu)
    _after_a_round_then(loop, fanout, quiet=0.05, working=0.005)
    assert len(loop.soon) == 1
    assert not loop.later


def test_a_change_while_the_loop_is_busy_waits_out_the_gap() -> None:
    loop = _Loop()
    fanout = FanoutRounds(lambda: loop.cpu)
    _after_a_round_then(loop, fanout, quiet=0.05, working=0.045)
    assert not loop.soon
    delay, _ = loop.later[-1]
    assert abs(delay - (rounds.GAP * 0.04 - 0.05)) < 1e-9
