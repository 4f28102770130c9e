"""A feed: the live events of every watcher that asked for the same thing, in one shared log.

Watchers with the same selector (services and healthy-only; the resume point only matters
before they are live) see the same live events. So a change is appended once to each feed it
concerns, not once to each watcher, and each watcher keeps only a cursor into its feed's log.
Watchers that are released together and stand at the same cursor take the same message:
`take()` builds it once for all of them (and the adapters encode it once, `WatchBatch.encoded`).

The log holds at most `limit` events (the hub's `watch_max_backlog`): a watcher whose cursor
falls off its start has lost events and owes its stream a fresh snapshot instead.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable
from typing import Protocol

from discovery.core.watch.events import WatchBatch, WatchEvent

#: What the watchers of a feed asked for: the services (empty: all), healthy only.
FeedKey = tuple[frozenset[str], bool]


class FeedWatcher(Protocol):
    """What a feed needs of its watchers."""

    def release(self, round_id: int) -> bool:
        """Let the watcher take what it has queued; False when it has nothing to take."""


class Feed:
    """The shared live log of the watchers of one selector."""

    __slots__ = (
        "_at",
        "_batch",
        "_events",
        "_on_behind",
        "end",
        "first",
        "key",
        "limit",
        "loop",
        "scheduled",
        "watchers",
    )

    def __init__(self, key: FeedKey, limit: int, on_behind: Callable[[], None]) -> None:
        self.key = key
        self.limit = limit
        self._on_behind = on_behind  # called once for each watcher that falls behind
        # The watchers by cursor, so that dropping the oldest event finds those it leaves
        # behind without looking at the others.
        self._at: dict[int, set[FeedWatcher]] = {}
        self.watchers: dict[FeedWatcher, None] = {}  # insertion-ordered
        self._events: deque[WatchEvent] = deque()
        self.first = 0  # sequence number of the oldest event held
        self.end = 0  # sequence number the next event will get
        self._batch: tuple[int, int, WatchBatch, int] | None = None  # start, end seen, batch, next
        self.loop: asyncio.AbstractEventLoop | None = None  # once a watcher streams
        self.scheduled = False  # waiting for a fan-out round

    def append(self, event: WatchEvent) -> None:
        """Add a live event; past `limit` events the oldest is dropped."""
        events = self._events
        events.append(event)
        self.end += 1
        if len(events) > self.limit:
            events.popleft()
            for _ in self._at.pop(self.first, ()):
                self._on_behind()
            self.first += 1

    def move(self, watcher: FeedWatcher, old: int | None, new: int | None) -> None:
        """A watcher's cursor went from `old` to `new` (None: not in the feed)."""
        if old is not None and (at := self._at.get(old)) is not None:
            at.discard(watcher)
            if not at:
                del self._at[old]
        if new is not None:
            self._at.setdefault(new, set()).add(watcher)

    def take(self, start: int, max_events: int, max_weight: int) -> tuple[WatchBatch, int]:
        """The message of the events from sequence number `start` on (at most `max_events`
        events and about `max_weight` bytes), and the sequence number after it. The same
        message object for every watcher asking with the same `start` until the log grows."""
        cached = self._batch
        if cached is not None and cached[0] == start and cached[1] == self.end:
            return cached[2], cached[3]
        taken: list[WatchEvent] = []
        weight = 0
        for event in itertools.islice(self._events, start - self.first, None):
            weight += event.weight
            if len(taken) >= max_events or (weight > max_weight and taken):
                break
            taken.append(event)
        batch = WatchBatch(taken[-1].revision, tuple(taken))
        after = start + len(taken)
        self._batch = (start, self.end, batch, after)
        return batch, after

    def release(self, round_id: int) -> list[FeedWatcher]:
        """Release every streaming watcher with something to take; those released."""
        self.scheduled = False
        return [watcher for watcher in self.watchers if watcher.release(round_id)]
