"""The watch hub: every registry change fanned out to watchers, each behind a bounded queue.

The hub listens to the registry. For each change it builds one `WatchEvent` (two at most: a
healthy-only watcher sees an instance leaving the healthy set as a DELETE) and appends that same
object to the queue of every watcher that matches. Adapters encode an event through
`WatchEvent.encoded`, which caches the encoding on the event, so a change is encoded once per
protocol however many streams carry it.

A watcher whose queue passes `watch_max_backlog` loses the backlog and is marked behind; when its
stream next asks for a message it gets a fresh reset snapshot instead. Pushing never awaits, so
a slow stream cannot hold up the registry, the API or other watchers.

Protocol-neutral: `Watcher` yields `WatchBatch` values; the gRPC and SSE adapters turn them into
their own messages.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

from discovery.config import Settings
from discovery.errors import ShuttingDown
from discovery.model import Change, EventType
from discovery.registry import Registry
from discovery.watch_types import WatchBatch, WatchEvent, WatchSelector

__all__ = ["WatchBatch", "WatchEvent", "WatchHub", "WatchSelector", "Watcher"]

#: At most this many events go in one message ...
MAX_BATCH_EVENTS = 500
#: ... and about this many bytes (estimated), well under gRPC's default 4 MiB receive limit.
MAX_BATCH_WEIGHT = 1 << 20
#: Timers may fire this much early; a stream this close to its progress deadline is due.
_TIMER_SLACK = 0.002


class _Fanout:
    """A change and the events it turns into; kept for resumes from history."""

    __slots__ = ("_exit", "change", "event")

    def __init__(self, change: Change) -> None:
        self.change = change
        self.event = WatchEvent(change.type, change.instance, change.revision)
        self._exit: WatchEvent | None = None

    def for_healthy_only(self) -> WatchEvent | None:
        """The event a healthy-only watcher sees: entering or staying is a PUT, leaving a DELETE."""
        change = self.change
        if change.healthy_after:
            return self.event
        if not change.healthy_before:
            return None  # a change outside the healthy set
        if change.type is EventType.DELETE:
            return self.event
        if self._exit is None:
            self._exit = WatchEvent(EventType.DELETE, change.instance, change.revision)
        return self._exit


class WatchHub:
    """Watchers over one registry. Used from the registry's event loop only."""

    def __init__(self, registry: Registry, settings: Settings) -> None:
        self._registry = registry
        self.max_backlog = settings.watch_max_backlog
        self.progress_interval = settings.watch_progress_interval
        self.closed = False
        # Index by service name; None holds the watchers of every service.
        self._plain: dict[str | None, set[Watcher]] = {}
        self._healthy: dict[str | None, set[Watcher]] = {}
        # The last PUT of every instance, by service, for snapshots without copying the registry.
        self._current: dict[str, dict[str, WatchEvent]] = {}
        # Recent changes with their (shared, already encoded) events, for resumes.
        self._recent: deque[_Fanout] = deque(maxlen=settings.watch_history_size)
        for instance in registry.all_instances():
            snap = instance.snapshot()
            event = WatchEvent(EventType.PUT, snap, instance.revision)
            self._current.setdefault(instance.service_name, {})[instance.instance_id] = event
        registry.subscribe(self._on_change)

    @property
    def revision(self) -> int:
        return self._registry.revision

    def __len__(self) -> int:
        """How many watchers are open."""
        return len(self.watchers())

    def watch(self, selector: WatchSelector) -> Watcher:
        """Open a watcher: its first messages are a snapshot, or the history after its resume
        point when the registry still holds it. `ShuttingDown` once `close()` was called."""
        if self.closed:
            raise ShuttingDown()
        watcher = Watcher(self, selector)
        replay = self._replay(selector) if selector.start_revision > 0 else None
        if replay is None:
            watcher.start_snapshot()
        else:
            watcher.start_replay(replay)
        index = self._healthy if selector.healthy_only else self._plain
        for name in selector.services or (None,):
            index.setdefault(name, set()).add(watcher)
        return watcher

    def watchers(self) -> list[Watcher]:
        """Every open watcher (for diagnostics and tests)."""
        found: dict[Watcher, None] = {}
        for index in (self._plain, self._healthy):
            for watchers in index.values():
                found.update(dict.fromkeys(watchers))
        return list(found)

    def close(self) -> None:
        """End every watcher (their streams finish cleanly) and refuse new ones."""
        self.closed = True
        for watcher in self.watchers():
            watcher.end()

    def snapshot(self, selector: WatchSelector) -> list[WatchEvent]:
        """PUT events for every instance the selector matches, as things stand now."""
        current = self._current
        names = selector.services or current.keys()
        events: list[WatchEvent] = []
        for name in names:
            instances = current.get(name)
            if instances:
                events.extend(instances.values())
        if selector.healthy_only:
            events = [e for e in events if e.instance.healthy]
        return events

    # -- internals --------------------------------------------------------------------------

    def _forget(self, watcher: Watcher) -> None:
        index = self._healthy if watcher.selector.healthy_only else self._plain
        for name in watcher.selector.services or (None,):
            watchers = index.get(name)
            if watchers is not None:
                watchers.discard(watcher)
                if not watchers:
                    del index[name]

    def _replay(self, selector: WatchSelector) -> list[WatchEvent] | None:
        changes = self._registry.changes_since(selector.start_revision)
        if changes is None:
            return None
        services = selector.services
        events: list[WatchEvent] = []
        for change in changes:
            if services and change.instance.service_name not in services:
                continue
            fanout = self._fanout_of(change)
            event = fanout.for_healthy_only() if selector.healthy_only else fanout.event
            if event is not None:
                events.append(event)
        return events

    def _fanout_of(self, change: Change) -> _Fanout:
        recent = self._recent
        if recent:
            index = change.revision - recent[0].change.revision
            if 0 <= index < len(recent) and recent[index].change is change:
                return recent[index]
        return _Fanout(change)

    def _on_change(self, change: Change) -> None:
        fanout = _Fanout(change)
        self._recent.append(fanout)
        instance = change.instance
        name = instance.service_name
        if change.type is EventType.PUT:
            self._current.setdefault(name, {})[instance.instance_id] = fanout.event
        else:
            instances = self._current.get(name, {})
            instances.pop(instance.instance_id, None)
            if not instances:
                self._current.pop(name, None)
        for key in (name, None):
            plain = self._plain.get(key)
            if plain:
                event = fanout.event
                for watcher in plain:
                    watcher.push(event)
            healthy = self._healthy.get(key)
            if healthy:
                only = fanout.for_healthy_only()
                if only is not None:
                    for watcher in healthy:
                        watcher.push(only)


class Watcher:
    """One subscriber: its selector, its bounded queue, and what it still owes its stream.

    `poll()` returns the next message to send without waiting; iterating the watcher waits for
    messages, sends progress on a quiet stream, and ends after `end()` (server shutdown).
    Call `close()` when the stream is over, however it ended.
    """

    def __init__(self, hub: WatchHub, selector: WatchSelector) -> None:
        self.hub = hub
        self.selector = selector
        self.resets = 0
        self._queue: deque[WatchEvent] = deque()
        self._behind = False
        self._ended = False
        self._closed = False
        # Messages owed before the queue: a snapshot or a replay from history.
        self._prefix: list[WatchEvent] = []
        self._prefix_at = 0
        self._snapshot_revision: int | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_sent = 0.0
        self._progress_due = False

    @property
    def backlog(self) -> int:
        """How many live events wait in the queue."""
        return len(self._queue)

    @property
    def behind(self) -> bool:
        """Fell behind: the backlog was dropped and a fresh snapshot is owed."""
        return self._behind

    def push(self, event: WatchEvent) -> None:
        """Queue an event; past the backlog limit drop everything and owe a reset instead."""
        if self._behind:
            return
        queue = self._queue
        queue.append(event)
        if len(queue) > self.hub.max_backlog:
            queue.clear()
            self._behind = True
        self._wake()

    def end(self) -> None:
        """Finish the stream after the current message (server shutdown)."""
        self._ended = True
        self._wake()

    def close(self) -> None:
        """Unsubscribe; idempotent."""
        if not self._closed:
            self._closed = True
            self._queue.clear()
            self._prefix = []
            self.hub._forget(self)

    def start_snapshot(self) -> None:
        self._queue.clear()
        self._behind = False
        self._snapshot_revision = self.hub.revision
        self._prefix = self.hub.snapshot(self.selector)
        self._prefix_at = 0
        self.resets += 1

    def start_replay(self, events: list[WatchEvent]) -> None:
        self._snapshot_revision = None
        self._prefix = events
        self._prefix_at = 0

    def poll(self) -> WatchBatch | None:
        """The next message owed, or None when there is nothing to send right now."""
        if self._closed or self._ended:
            return None
        if self._behind:
            self.start_snapshot()
        if self._snapshot_revision is not None:
            return self._next_snapshot_batch(self._snapshot_revision)
        if self._prefix_at < len(self._prefix):
            events = self._take_prefix()
            return WatchBatch(events[-1].revision, events)
        if self._queue:
            events = _take(self._queue)
            return WatchBatch(events[-1].revision, events)
        return None

    def progress(self) -> WatchBatch:
        """A progress message: everything up to the current revision has been said."""
        return WatchBatch(self.hub.revision)

    async def __aiter__(self) -> AsyncIterator[WatchBatch]:
        """Messages until `end()`; a progress message whenever the stream was quiet too long."""
        loop = asyncio.get_running_loop()
        self._last_sent = loop.time()
        self._arm(loop)
        try:
            while not self._ended and not self._closed:
                batch = self.poll()
                if batch is None:
                    if not self._progress_due:
                        await self._wait(loop)
                        continue
                    batch = self.progress()
                self._progress_due = False
                yield batch
                self._last_sent = loop.time()
        finally:
            if self._timer is not None:
                self._timer.cancel()

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

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        # One timer per watcher, re-armed only when it fires, rather than one per wait: a change
        # wakes every watcher, and thousands of timers made and cancelled per change add up.
        interval = self.hub.progress_interval
        quiet = loop.time() - self._last_sent
        if quiet >= interval - _TIMER_SLACK:
            self._progress_due = True
            self._wake()
            quiet = 0.0
        self._timer = loop.call_later(interval - quiet, self._arm, loop)

    async def _wait(self, loop: asyncio.AbstractEventLoop) -> None:
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None


def _take(queue: deque[WatchEvent]) -> list[WatchEvent]:
    events: list[WatchEvent] = []
    weight = 0
    while queue and len(events) < MAX_BATCH_EVENTS:
        weight += queue[0].weight
        if weight > MAX_BATCH_WEIGHT and events:
            break
        events.append(queue.popleft())
    return events
