"""The watch hub: every registry change fanned out to watchers, each behind a bounded queue.

The hub listens to the registry. For each change it builds one `WatchEvent` (two at most: a
healthy-only watcher sees an instance leaving the healthy set as a DELETE) and appends it to
every feed that matches: watchers with the same selector share one feed, a log they each hold a
cursor into (`discovery.core.watch.feed`), so a change costs one append per feed, not one per
watcher. A fan-out round (`discovery.core.watch.rounds`) then lets the watchers take what they
have queued, as one message each. Adapters encode an event through `WatchEvent.encoded` and a
message through `WatchBatch.encoded`, which cache the encoding, so a change is encoded once per
protocol however many streams carry it.

A watcher (`discovery.core.watch.queue`) more than `watch_max_backlog` events behind its feed
loses the backlog; when its stream next asks for a message it gets a fresh reset snapshot
instead. Appending never awaits, so a slow stream cannot hold up the registry, the API or other
watchers.

The hub keeps the last event of every instance (snapshots are built from it, already encoded)
and the recent changes with their events (resumes are served from them).

Protocol-neutral: watchers hand out `WatchBatch` values; the gRPC and SSE adapters turn them
into their own messages.
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque

from discovery.core.errors import ShuttingDown
from discovery.core.metrics import GRPC, WATCH_PROTOCOLS, Metrics
from discovery.core.model import Change, EventType
from discovery.core.registry import Registry
from discovery.core.settings import Settings
from discovery.core.watch.events import WatchBatch, WatchEvent, WatchSelector
from discovery.core.watch.feed import Feed, FeedKey
from discovery.core.watch.queue import ProgressPacer, Watcher
from discovery.core.watch.rounds import FanoutRounds

__all__ = ["WatchBatch", "WatchEvent", "WatchHub", "WatchSelector", "Watcher"]


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


def _revision_of(fanout: _Fanout) -> int:
    return fanout.change.revision


class WatchHub:
    """Watchers over one registry. Used from the registry's event loop only."""

    def __init__(
        self, registry: Registry, settings: Settings, metrics: Metrics | None = None
    ) -> None:
        self._registry = registry
        self._metrics = metrics or Metrics()
        #: Open watchers by protocol (the `discovery_watchers` gauge).
        self.open_watchers = dict.fromkeys(WATCH_PROTOCOLS, 0)
        self.max_backlog = settings.watch_max_backlog
        self.pacer = ProgressPacer(settings.watch_progress_interval)
        self.rounds = FanoutRounds()
        self.closed = False
        # One feed per selector; indexed by service name (None: the feeds of every service).
        self._feeds: dict[FeedKey, Feed] = {}
        self._plain: dict[str | None, set[Feed]] = {}
        self._healthy: dict[str | None, set[Feed]] = {}
        # The last PUT of every instance, by service, for snapshots without copying the registry.
        self._current: dict[str, dict[str, WatchEvent]] = {}
        # Recent changes with their (shared, already encoded) events, for resumes.
        self._recent: deque[_Fanout] = deque(maxlen=settings.watch_history_size)
        # The revision up to which history has been dropped: resumes from before it get a reset.
        self._floor = 0
        self.reload()
        registry.subscribe(self._on_change)

    def reload(self) -> None:
        """Take the registry's instances as they are now (after a restore), without history:
        a resume from an earlier revision then gets a reset snapshot."""
        self._current.clear()
        self._recent.clear()
        self._floor = self._registry.revision
        for instance in self._registry.all_instances():
            snap = instance.published or instance.snapshot()
            event = WatchEvent(EventType.PUT, snap, instance.revision)
            self._current.setdefault(instance.service_name, {})[instance.instance_id] = event

    @property
    def revision(self) -> int:
        return self._registry.revision

    def __len__(self) -> int:
        """How many watchers are open."""
        return len(self.watchers())

    def watch(self, selector: WatchSelector, protocol: str = GRPC) -> Watcher:
        """Open a watcher: its first messages are a snapshot, or the history after its resume
        point when the registry still holds it. `ShuttingDown` once `close()` was called.

        `protocol` says which stream carries it (`discovery.core.metrics`), for the counts.
        """
        if self.closed:
            raise ShuttingDown()
        key = (selector.services, selector.healthy_only)
        feed = self._feeds.get(key)
        if feed is None:
            feed = self._feeds[key] = Feed(key, self.max_backlog, self.fell_behind)
            index = self._healthy if selector.healthy_only else self._plain
            for name in selector.services or (None,):
                index.setdefault(name, set()).add(feed)
        watcher = Watcher(self, selector, feed, protocol)
        feed.watchers[watcher] = None
        replay = self._replay(selector) if selector.start_revision > 0 else None
        if replay is None:
            if selector.start_revision > 0:
                self.fell_behind()  # asked to resume, but the history cannot tell it all
            watcher.start_snapshot()
        else:
            watcher.start_replay(replay)
        self.open_watchers[protocol] = self.open_watchers.get(protocol, 0) + 1
        return watcher

    def watchers(self) -> list[Watcher]:
        """Every open watcher (for diagnostics and tests)."""
        return [w for feed in self._feeds.values() for w in feed.watchers if isinstance(w, Watcher)]

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

    def fell_behind(self) -> None:
        """A watcher gets a reset snapshot instead of the changes it missed."""
        self._metrics.watch_resets += 1

    def forget(self, watcher: Watcher) -> None:
        """Stop feeding `watcher` (called once by the watcher when it closes)."""
        self.open_watchers[watcher.protocol] -= 1
        feed = watcher.feed
        feed.watchers.pop(watcher, None)
        if feed.watchers or self._feeds.get(feed.key) is not feed:
            return
        del self._feeds[feed.key]
        index = self._healthy if watcher.selector.healthy_only else self._plain
        for name in watcher.selector.services or (None,):
            feeds = index.get(name)
            if feeds is not None:
                feeds.discard(feed)
                if not feeds:
                    del index[name]

    def _replay(self, selector: WatchSelector) -> list[WatchEvent] | None:
        fanouts = self._since(selector.start_revision)
        if fanouts is None:
            return None
        services = selector.services
        events: list[WatchEvent] = []
        for fanout in fanouts:
            if services and fanout.change.instance.service_name not in services:
                continue
            event = fanout.for_healthy_only() if selector.healthy_only else fanout.event
            if event is not None:
                events.append(event)
        return events

    def _since(self, revision: int) -> list[_Fanout] | None:
        """The changes after `revision`, or None when the history cannot tell them all (gone,
        from before this registry, or ahead of it)."""
        # Revisions grow but may skip numbers (a shared store's revisions count its internal
        # writes too), so the first change after `revision` is found by bisection.
        recent = self._recent
        if revision < self._floor or revision > self._registry.revision:
            return None
        start = bisect.bisect_right(recent, revision, key=_revision_of)
        return list(itertools.islice(recent, start, None))

    def _on_change(self, change: Change) -> None:
        fanout = _Fanout(change)
        recent = self._recent
        if len(recent) == recent.maxlen:
            self._floor = recent[0].change.revision
        recent.append(fanout)
        instance = change.instance
        name = instance.service_name
        if change.type is EventType.PUT:
            self._current.setdefault(name, {})[instance.instance_id] = fanout.event
        else:
            instances = self._current.get(name, {})
            instances.pop(instance.instance_id, None)
            if not instances:
                self._current.pop(name, None)
        rounds = self.rounds
        for key in (name, None):
            for feed in self._plain.get(key, ()):
                feed.append(fanout.event)
                if feed.loop is not None and not feed.scheduled:
                    rounds.schedule(feed, feed.loop)
        healthy = [f for key in (name, None) for f in self._healthy.get(key, ())]
        if healthy and (only := fanout.for_healthy_only()) is not None:
            for feed in healthy:
                feed.append(only)
                if feed.loop is not None and not feed.scheduled:
                    rounds.schedule(feed, feed.loop)
