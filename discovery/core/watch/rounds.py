"""Fan-out rounds: when watchers may take their queued live events, so that a burst of changes
goes out as a few large messages rather than one message per change per watcher.

Sending a message costs a stream about the same whatever it holds, and every stream's write
competes with the registry's own calls for the one event loop. So the hub does not wake a
watcher for each change. A change is appended to the feeds it concerns
(`discovery.core.watch.feed`) and those feeds are scheduled; a round then releases every
watcher of the scheduled feeds that has something to take, and each takes everything it has
queued as one message. The round ends when every released watcher has come back for more (its
message went out) or after `ROUND_LIMIT` seconds; a watcher still sending then is not waited on
by later rounds. The next round starts no sooner than twice the last one took (`GAP` times its
length, at most `MAX_GAP`), which leaves about two thirds of the loop to the API while
watchers are busy; the more changes come in meanwhile, the more each message holds. (With the
gap as long as the round, writes with 200 watchers ran at 0.47x their rate with none; the
cost of a round is mostly gRPC's, one write per stream, so fewer rounds is what buys it.)

The gap counts only the part of the round the loop worked: `GAP` times the CPU time the
loop's thread spent during the round (at most `GAP` times its length). Under load the loop
works all round and the gap is about twice the round, as above. A round on a quiet server is
mostly the wait for its writes to complete (about 1.5 ms for one stream here, of which the loop
works 0.2 ms): a gap of twice its length would hold back a change following within a few
milliseconds, for nothing (the same-run figures are in the README's Performance section).

The gap paces a busy loop only: a change that comes after the loop sat mostly idle since the
last round ended (less than `IDLE_SHARE` of that time working) starts its round at once. One
change at a time to 1,000 watchers, 50 ms apart, waited out most of an 80 ms gap each (p50 58 ms
against 24 ms for a bare grpc.aio fan-out); under a stream of writes the loop is busy between
rounds and the gap holds as before.

A change on a quiet server starts a round at once (on the next loop step, so every watcher of
the change is released together): it reaches watchers with no added delay. Under load a change
waits at most about two rounds and a gap: at most `2 * ROUND_LIMIT + MAX_GAP`, under a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Protocol

#: A round that lasted this long ends even if some streams have not come back (a slow reader
#: mid-write): the others must not wait on it.
ROUND_LIMIT = 0.25
#: The pause after a round, as a multiple of the round's length ...
GAP = 2.0
#: ... and at most this many seconds, which bounds how long a change can wait.
MAX_GAP = 0.3
#: A change that finds the loop idle for more than this share of the time since the last round
#: ended starts its round at once, gap or not: there is no API work for the gap to protect.
IDLE_SHARE = 0.5


class Releasable(Protocol):
    """What a round needs of a feed."""

    scheduled: bool

    def release(self, round_id: int) -> Iterable[object]:
        """Let the feed's watchers take what they have queued; the watchers released."""


class FanoutRounds:
    """Paces the release of queued live events to a hub's watchers (see the module doc)."""

    def __init__(self, cpu_clock: Callable[[], float] = time.thread_time) -> None:
        """`cpu_clock`: the CPU time of the loop's thread (the loop calls every method)."""
        self._cpu_clock = cpu_clock
        self._cpu_started = 0.0
        self._pending: dict[Releasable, None] = {}  # feeds, insertion-ordered
        self._running: set[object] = set()  # watchers released and not back yet
        self._round = 0
        self._started = 0.0
        self._next_at = 0.0
        self._ended = 0.0  # when the last round ended (loop time) ...
        self._cpu_ended = 0.0  # ... and the loop thread's CPU time then
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush: asyncio.Handle | None = None
        self._limit: asyncio.TimerHandle | None = None

    @property
    def round_id(self) -> int:
        return self._round

    def schedule(self, feed: Releasable, loop: asyncio.AbstractEventLoop) -> None:
        """`feed` has new events: release its watchers with the next round."""
        feed.scheduled = True
        self._pending[feed] = None
        self._loop = loop
        if self._flush is None and not self._running:
            self._arm(loop)

    def finished(self, watcher: object, round_id: int) -> None:
        """`watcher` came back after what round `round_id` released to it."""
        if round_id != self._round or watcher not in self._running:
            return
        self._running.discard(watcher)
        if not self._running:
            self._end_round()

    def forget(self, watcher: object) -> None:
        """The watcher closed."""
        if watcher in self._running:
            self._running.discard(watcher)
            if not self._running:
                self._end_round()

    # -- internals --------------------------------------------------------------------------

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        delay = self._next_at - now
        if delay > 0 and self._cpu_clock() - self._cpu_ended < IDLE_SHARE * (now - self._ended):
            delay = 0.0  # a lone change after a quiet spell: nothing to pace
        if delay > 0:
            self._flush = loop.call_later(delay, self._start_round)
        else:
            self._flush = loop.call_soon(self._start_round)

    def _start_round(self) -> None:
        self._flush = None
        loop = self._loop
        assert loop is not None
        released, self._pending = self._pending, {}
        if not released:
            return
        self._round += 1
        self._started = loop.time()
        self._cpu_started = self._cpu_clock()
        running: set[object] = set()
        for feed in released:
            running.update(feed.release(self._round))
        if not running:
            return
        self._running = running
        self._limit = loop.call_later(ROUND_LIMIT, self._end_round)

    def _end_round(self) -> None:
        loop = self._loop
        assert loop is not None
        if self._limit is not None:
            self._limit.cancel()
            self._limit = None
        self._running = set()
        now = loop.time()
        cpu = self._cpu_clock()
        worked = min(now - self._started, cpu - self._cpu_started)
        self._next_at = now + min(GAP * worked, MAX_GAP)
        self._ended, self._cpu_ended = now, cpu
        if self._pending and self._flush is None:
            self._arm(loop)
