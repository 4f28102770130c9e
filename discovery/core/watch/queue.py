"""One watcher: its cursor into a shared feed of live events, what it owes before them, and
progress timing.

The hub appends each change to the feeds it concerns (appending never waits); every watcher of
a feed has a cursor into it (`discovery.core.watch.feed`). The stream that owns the watcher
takes messages with `next_batch()`: first the snapshot or the replay it is owed, then its queued
live events (all of them in one message, up to a size limit), and a progress message when it
has been quiet for most of the progress interval (`ProgressPacer`). Live events are taken when
the hub's fan-out round releases the watcher (`FanoutRounds`), so a burst of changes reaches a
stream as a few messages, not one per change.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

from discovery.core.watch.events import WatchBatch, WatchEvent, WatchSelector
from discovery.core.watch.feed import Feed
from discovery.core.watch.rounds import FanoutRounds

#: At most this many events go in one message ...
MAX_BATCH_EVENTS = 500
#: ... and about this many bytes (estimated), well under gRPC's default 4 MiB receive limit.
MAX_BATCH_WEIGHT = 1 << 20
#: Timers may fire this much early; a stream this close to its progress deadline is due.
_TIMER_SLACK = 0.002
#: The pacer looks at every stream this many times per progress interval.
PACER_TICKS = 10


class ProgressPacer:
    """Owes a progress message to every stream quiet for 9/10 of the progress interval, so
    that no stream stays silent for longer than the interval.

    One periodic timer for all of a hub's streams, rather than one per stream: the quiet
    streams of a tick get their progress together (several streams of a connection go out in
    one write), and thousands of idle streams cost one timer, not thousands.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.tick = interval / PACER_TICKS
        self._watchers: set[Watcher] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def add(self, watcher: Watcher, loop: asyncio.AbstractEventLoop) -> None:
        self._watchers.add(watcher)
        if self._timer is None:
            self._loop = loop
            self._timer = loop.call_later(self.tick, self._check)

    def discard(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)
        if not self._watchers and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        loop = self._loop
        assert loop is not None
        quiet_since = loop.time() - (self.interval - self.tick) + _TIMER_SLACK
        for watcher in self._watchers:
            if watcher.last_sent <= quiet_since:
                watcher.owe_progress()
        self._timer = loop.call_later(self.tick, self._check)


class WatcherSource(Protocol):
    """What a watcher needs from the hub that feeds it (the hub is one; tests may fake it)."""

    @property
    def pacer(self) -> ProgressPacer:
        """The progress timer shared by the source's watchers."""

    @property
    def rounds(self) -> FanoutRounds:
        """When the source's watchers may take their queued live events."""

    @property
    def revision(self) -> int:
        """The current revision (of snapshots and progress messages)."""

    def snapshot(self, selector: WatchSelector) -> list[WatchEvent]:
        """PUT events for every instance the selector matches, as things stand now."""

    def forget(self, watcher: Watcher) -> None:
        """Stop pushing to `watcher` (it closed)."""

    def fell_behind(self) -> None:
        """A watcher dropped its backlog and owes its stream a reset (for the counts)."""


class Watcher:
    """One subscriber: its selector, its cursor into its feed, and what it still owes its stream.

    `poll()` returns the next message owed without waiting; `next_batch()` (or iterating the
    watcher) waits for one, sends progress on a quiet stream, and returns None after `end()`
    (server shutdown). Call `close()` when the stream is over, however it ended.
    """

    def __init__(
        self, hub: WatcherSource, selector: WatchSelector, feed: Feed, protocol: str = ""
    ) -> None:
        self.hub = hub
        self.selector = selector
        self.feed = feed
        self.protocol = protocol
        self.resets = 0
        self._cursor = feed.end  # the sequence number of the next live event to take
        feed.move(self, None, self._cursor)
        self._ended = False
        self._closed = False
        # Owed before the queue: a snapshot (at `_snapshot_revision`) or a replay from history.
        self._prefix: list[WatchEvent] = []
        self._prefix_at = 0
        self._snapshot_revision: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.last_sent = 0.0  # loop time of the last message taken
        self._progress_due = False
        # Fan-out rounds: queued live events wait for a round to release them (the first
        # take after the snapshot or replay is free: a round may have passed the watcher by
        # before it streamed); `_taken_in` is the round whose release the stream is sending,
        # reported when it is back for more.
        self._released = True
        self._taken_in: int | None = None

    @property
    def backlog(self) -> int:
        """How many live events wait for this watcher."""
        return 0 if self.behind else self.feed.end - self._cursor

    @property
    def behind(self) -> bool:
        """Fell behind: its feed dropped events it had not taken, and a fresh snapshot is owed."""
        return self._cursor < self.feed.first

    def release(self, round_id: int) -> bool:
        """The fan-out round `round_id` lets the stream take what it has queued; False (and
        nothing happens) when it has nothing queued or is not streaming yet."""
        if self._loop is None or self._cursor >= self.feed.end or self._closed:
            return False
        self._released = True
        if self._taken_in is not None:
            return False  # still sending an earlier round's message: no round waits on it again
        self._taken_in = round_id
        self._wake()  # its waiter may be cancelled already (the stream is going away)
        return True

    def end(self) -> None:
        """Finish the stream after the current message (server shutdown)."""
        self._ended = True
        self._wake()

    def close(self) -> None:
        """Unsubscribe; idempotent."""
        if not self._closed:
            self._closed = True
            self._prefix = []
            self.feed.move(self, self._cursor, None)
            self.hub.pacer.discard(self)
            self.hub.rounds.forget(self)
            self.hub.forget(self)

    def start_snapshot(self) -> None:
        """Owe a fresh snapshot (and skip the queued events: the snapshot covers them)."""
        self._move(self.feed.end)
        self._snapshot_revision = self.hub.revision
        self._prefix = self.hub.snapshot(self.selector)
        self._prefix_at = 0
        self.resets += 1

    def start_replay(self, events: list[WatchEvent]) -> None:
        """Owe these events from history before the queue."""
        self._snapshot_revision = None
        self._prefix = events
        self._prefix_at = 0

    def poll(self) -> WatchBatch | None:
        """The next message owed, or None when there is nothing to send right now."""
        if self._closed or self._ended:
            return None
        if self.behind:
            self.start_snapshot()  # counted when it fell behind (`Feed.append`)
        if self._snapshot_revision is not None:
            return self._next_snapshot_batch(self._snapshot_revision)
        if self._prefix_at < len(self._prefix):
            events = self._take_prefix()
            return WatchBatch(events[-1].revision, events)
        if self._cursor < self.feed.end:
            self._released = False  # until the next round
            # The same message object for every watcher of the feed at this cursor.
            batch, after = self.feed.take(self._cursor, MAX_BATCH_EVENTS, MAX_BATCH_WEIGHT)
            self._move(after)
            return batch
        return None

    def progress(self) -> WatchBatch:
        """A progress message: everything up to the current revision has been said."""
        return WatchBatch(self.hub.revision)

    def owe_progress(self) -> None:
        """The stream has been quiet too long: its next message is progress if nothing else."""
        self._progress_due = True
        self._wake()

    async def next_batch(self) -> WatchBatch | None:
        """The next message to send, waiting for one; progress when the stream has been quiet
        for the progress interval; None once the stream is to end."""
        loop = self._loop
        if loop is None:
            loop = self._loop = self.feed.loop = asyncio.get_running_loop()
            self.last_sent = loop.time()
            if not self._closed:
                self.hub.pacer.add(self, loop)
        while not self._ended and not self._closed:
            self._back()
            if self._held():
                await self._wait(loop)
                continue
            batch = self.poll()
            if batch is None:
                self._released = False
                self._back()  # released with nothing left to take: the round need not wait
                if not self._progress_due:
                    await self._wait(loop)
                    continue
                batch = self.progress()
            self._progress_due = False
            self.last_sent = loop.time()
            return batch
        return None

    async def __aiter__(self) -> AsyncIterator[WatchBatch]:
        while (batch := await self.next_batch()) is not None:
            yield batch

    # -- internals --------------------------------------------------------------------------

    def _next_snapshot_batch(self, revision: int) -> WatchBatch:
        first = self._prefix_at == 0
        events = self._take_prefix()
        last = self._prefix_at >= len(self._prefix)
        if last:
            self._snapshot_revision = None
            self._prefix = []
            self._prefix_at = 0
        return WatchBatch(revision, events, reset=first, synced=last, snapshot=True)

    def _move(self, cursor: int) -> None:
        self.feed.move(self, self._cursor, cursor)
        self._cursor = cursor

    def _held(self) -> bool:
        """Only live events are owed and no round has released them yet (a progress message
        due releases them: it must not claim a revision past events still queued)."""
        return (
            self._cursor < self.feed.end
            and not self._released
            and not self._progress_due
            and not self.behind
            and self._snapshot_revision is None
            and self._prefix_at >= len(self._prefix)
        )

    def _back(self) -> None:
        """The stream is back for more: the round that released its last message may end."""
        if self._taken_in is not None and not self._released:
            round_id, self._taken_in = self._taken_in, None
            self.hub.rounds.finished(self, round_id)

    def _take_prefix(self) -> list[WatchEvent]:
        prefix, start = self._prefix, self._prefix_at
        end, weight = start, 0
        while end < len(prefix) and end - start < MAX_BATCH_EVENTS:
            weight += prefix[end].weight
            if weight > MAX_BATCH_WEIGHT and end > start:
                break
            end += 1
        self._prefix_at = end
        return prefix[start:end]

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _wait(self, loop: asyncio.AbstractEventLoop) -> None:
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None
