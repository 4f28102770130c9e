"""The watch hub, one rule per test, without a network."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from discovery.core.errors import InvalidArgument, ShuttingDown
from discovery.core.model import EventType
from discovery.core.registry import Registry
from discovery.core.watch.hub import WatchBatch, WatchHub, WatchSelector
from discovery.core.watch.queue import MAX_BATCH_EVENTS, ProgressPacer
from discovery.rpc.streams import encode_batch
from discovery.testing import FakeClock, test_settings
from tests.watch_helpers import (
    ClientView,
    drain,
    expected_view,
    hub_on_fake_clock,
    register,
    set_health,
)

ALL = WatchSelector()


def test_snapshot_holds_every_instance_at_the_current_revision() -> None:
    registry, hub, _ = hub_on_fake_clock()
    for n in range(3):
        register(registry, "game", f"game-{n}")
    register(registry, "chat", "chat-1")
    watcher = hub.watch(ALL)
    batch = watcher.poll()
    assert batch is not None
    assert batch.reset
    assert batch.synced
    assert batch.snapshot
    assert batch.revision == registry.revision
    assert [e.instance.key for e in batch.events] == [
        ("game", "game-0"),
        ("game", "game-1"),
        ("game", "game-2"),
        ("chat", "chat-1"),
    ]
    assert all(e.type is EventType.PUT for e in batch.events)
    # each event carries the revision of its instance's last change
    assert [e.revision for e in batch.events] == [
        registry.require(*e.instance.key).revision for e in batch.events
    ]
    assert watcher.poll() is None


def test_empty_snapshot_is_one_reset_synced_message() -> None:
    registry, hub, _ = hub_on_fake_clock()
    batch = hub.watch(ALL).poll()
    assert batch is not None
    assert (batch.reset, batch.synced, list(batch.events)) == (True, True, [])
    assert batch.revision == registry.revision


def test_snapshot_of_over_a_thousand_instances_is_chunked() -> None:
    registry, hub, _ = hub_on_fake_clock()
    for n in range(1_234):
        register(registry, "game", f"game-{n}")
    watcher = hub.watch(ALL)
    batches = []
    while (batch := watcher.poll()) is not None:
        batches.append(batch)
    assert len(batches) >= 3
    assert [b.reset for b in batches] == [True] + [False] * (len(batches) - 1)
    assert [b.synced for b in batches] == [False] * (len(batches) - 1) + [True]
    assert {b.revision for b in batches} == {registry.revision}
    assert all(len(b.events) <= MAX_BATCH_EVENTS for b in batches)
    keys = [e.instance.key for b in batches for e in b.events]
    assert len(keys) == len(set(keys)) == 1_234


def test_changes_arrive_in_revision_order_exactly_once() -> None:
    registry, hub, _ = hub_on_fake_clock()
    watcher = hub.watch(ALL)
    view = drain(watcher)
    start = registry.revision
    for n in range(50):
        register(registry, "game", f"game-{n}")
        registry.heartbeat("game", f"game-{n}", load=(n % 10) / 10)
        if n % 7 == 0:
            registry.unregister("game", f"game-{n}")
    drain(watcher, view)
    assert view.live_revisions == list(range(start + 1, registry.revision + 1))
    assert view.keys == expected_view(registry)


def test_message_revision_is_the_last_events_revision() -> None:
    registry, hub, _ = hub_on_fake_clock()
    watcher = hub.watch(ALL)
    drain(watcher)
    for n in range(5):
        register(registry, "game", f"game-{n}")
    batch = watcher.poll()
    assert batch is not None
    assert len(batch.events) == 5  # a watcher that is behind gets its backlog in one message
    assert batch.revision == batch.events[-1].revision == registry.revision


def test_service_filter() -> None:
    registry, hub, _ = hub_on_fake_clock()
    register(registry, "game", "game-1")
    register(registry, "chat", "chat-1")
    watcher = hub.watch(WatchSelector(frozenset({"chat"})))
    view = drain(watcher)
    register(registry, "game", "game-2")
    register(registry, "chat", "chat-2")
    drain(watcher, view)
    assert set(view.keys) == {("chat", "chat-1"), ("chat", "chat-2")}


def test_healthy_only_turns_health_transitions_into_put_and_delete() -> None:
    registry, hub, _ = hub_on_fake_clock()
    register(registry, "game", "game-1", probed=True)  # unknown: not in the healthy set
    watcher = hub.watch(WatchSelector(healthy_only=True))
    view = drain(watcher)
    assert view.keys == {}
    set_health(registry, "game", "game-1", True)
    batch = watcher.poll()
    assert batch is not None
    assert [(e.type, e.instance.key) for e in batch.events] == [(EventType.PUT, ("game", "game-1"))]
    set_health(registry, "game", "game-1", False)
    batch = watcher.poll()
    assert batch is not None
    assert [(e.type, e.instance.key) for e in batch.events] == [
        (EventType.DELETE, ("game", "game-1"))
    ]
    registry.heartbeat("game", "game-1", load=0.5)  # a change outside the healthy set
    assert watcher.poll() is None
    set_health(registry, "game", "game-1", True)
    registry.unregister("game", "game-1")
    batch = watcher.poll()
    assert batch is not None
    assert [e.type for e in batch.events] == [EventType.PUT, EventType.DELETE]


def test_resume_from_history_sends_the_missed_events_without_reset() -> None:
    registry, hub, _ = hub_on_fake_clock()
    register(registry, "game", "game-1")
    first = hub.watch(ALL)
    view = drain(first)
    first.close()
    register(registry, "game", "game-2")
    registry.unregister("game", "game-1")
    resumed = hub.watch(WatchSelector(start_revision=view.revision))
    batch = resumed.poll()
    assert batch is not None
    assert not batch.reset
    assert batch.synced
    assert [(e.type, e.instance.instance_id) for e in batch.events] == [
        (EventType.PUT, "game-2"),
        (EventType.DELETE, "game-1"),
    ]
    view.apply(batch)
    assert view.keys == expected_view(registry)


def test_resume_at_the_current_revision_sends_nothing_until_a_change() -> None:
    registry, hub, _ = hub_on_fake_clock()
    register(registry, "game", "game-1")
    watcher = hub.watch(WatchSelector(start_revision=registry.revision))
    assert watcher.poll() is None
    register(registry, "game", "game-2")
    batch = watcher.poll()
    assert batch is not None
    assert not batch.reset
    assert [e.instance.instance_id for e in batch.events] == ["game-2"]


@pytest.mark.parametrize("where", ["history gone", "ahead", "before restart"])
def test_resume_resets_when_history_cannot_serve_it(where: str) -> None:
    registry, hub, clock = hub_on_fake_clock(watch_history_size=5)
    register(registry, "game", "game-1")
    old = registry.revision
    if where == "history gone":
        for n in range(10):
            register(registry, "game", f"game-{n + 2}")
        start = old
    elif where == "ahead":
        start = registry.revision + 1
    else:
        clock.advance(60)  # a restarted server starts its counter from the clock
        registry = Registry(test_settings(watch_history_size=5), clock)
        hub = WatchHub(registry, test_settings())
        register(registry, "game", "game-9")
        start = old
    batch = hub.watch(WatchSelector(start_revision=start)).poll()
    assert batch is not None
    assert batch.reset
    assert batch.revision == registry.revision


def test_a_stuck_watcher_is_bounded_and_gets_a_fresh_snapshot() -> None:
    registry, hub, _ = hub_on_fake_clock(watch_max_backlog=100)
    stuck = hub.watch(ALL)
    reader = hub.watch(ALL)
    stuck.poll()  # took its snapshot, then never reads again
    view = drain(reader)
    start = registry.revision
    most = 0
    for n in range(5_000):
        register(registry, "game", f"game-{n % 300}", port=8000 + n)
        most = max(most, stuck.backlog)
        if n % 50 == 0:
            drain(reader, view)
    drain(reader, view)
    assert most <= 100
    assert view.live_revisions == list(range(start + 1, registry.revision + 1))
    stuck_view = drain(stuck)
    assert stuck_view.resets == 1
    assert stuck_view.keys == expected_view(registry)


def test_one_change_is_encoded_once_for_every_stream() -> None:
    registry, hub, _ = hub_on_fake_clock()
    watchers = [hub.watch(ALL) for _ in range(3)]
    for watcher in watchers:
        drain(watcher)
    register(registry, "game", "game-1")
    messages = []
    for watcher in watchers:
        batch = watcher.poll()
        assert batch is not None
        messages.append(encode_batch(batch))
    assert messages[0] is messages[1] is messages[2]


def test_close_ends_every_watcher_and_refuses_new_ones() -> None:
    _registry, hub, _ = hub_on_fake_clock()
    watcher = hub.watch(ALL)
    hub.close()
    assert watcher.poll() is None
    with pytest.raises(ShuttingDown):
        hub.watch(ALL)


def test_closed_watchers_leave_the_hub() -> None:
    _registry, hub, _ = hub_on_fake_clock()
    watchers = [
        hub.watch(WatchSelector(frozenset({"a", "b"}), healthy_only=h)) for h in (False, True)
    ]
    watchers.append(hub.watch(ALL))
    assert len(hub) == 3
    for watcher in watchers:
        watcher.close()
    assert len(hub) == 0


def test_bad_selector_names_the_field() -> None:
    with pytest.raises(InvalidArgument, match="service_names"):
        WatchSelector.checked(["game", "bad name"])


async def test_progress_on_a_quiet_stream() -> None:
    registry, hub, _ = hub_on_fake_clock(watch_progress_interval=0.1)
    register(registry, "game", "game-1")
    watcher = hub.watch(WatchSelector(frozenset({"game"})))
    stream = aiter(watcher)
    view = ClientView()
    view.apply(await anext(stream))
    started = time.monotonic()
    progress = await asyncio.wait_for(anext(stream), 2)
    assert time.monotonic() - started >= 0.085  # quiet for 9/10 of the interval, less slack
    assert progress.is_progress
    assert progress.synced
    assert not progress.events
    register(registry, "chat", "chat-1")  # no event for a game watcher, yet progress moves on
    progress = await asyncio.wait_for(anext(stream), 2)
    view.apply(progress)
    assert progress.is_progress
    assert progress.revision == registry.revision
    watcher.end()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(stream), 2)


async def test_iteration_wakes_at_once_on_a_change() -> None:
    registry, hub, _ = hub_on_fake_clock(watch_progress_interval=5)
    watcher = hub.watch(ALL)
    stream = aiter(watcher)
    await anext(stream)
    pending = asyncio.ensure_future(anext(stream))
    for _ in range(10):  # turns of the loop, no time: only a change can wake it
        await asyncio.sleep(0)
    assert not pending.done()
    register(registry, "game", "game-1")
    batch = await asyncio.wait_for(pending, 1)
    assert [e.instance.instance_id for e in batch.events] == ["game-1"]


def test_hub_built_on_a_populated_registry_snapshots_it() -> None:
    clock = FakeClock()
    registry = Registry(test_settings(), clock)
    register(registry, "game", "game-1")
    hub = WatchHub(registry, test_settings())
    assert drain(hub.watch(ALL)).keys == expected_view(registry)


class SteppedLoop:
    """Just enough of an event loop for the pacer: a clock moved by hand and its timers."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, Callable[[], object]]] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], object]) -> SteppedTimer:
        timer = SteppedTimer(self, (self.now + delay, callback))
        self.timers.append(timer.entry)
        return timer

    def run_until(self, moment: float) -> None:
        while self.timers and min(self.timers, key=lambda t: t[0])[0] <= moment:
            entry = min(self.timers, key=lambda t: t[0])
            self.timers.remove(entry)
            self.now = entry[0]
            entry[1]()
        self.now = moment


class SteppedTimer:
    def __init__(self, loop: SteppedLoop, entry: tuple[float, Callable[[], object]]) -> None:
        self.loop, self.entry = loop, entry

    def cancel(self) -> None:
        if self.entry in self.loop.timers:
            self.loop.timers.remove(self.entry)


class QuietStream:
    """A stream that sends its progress as soon as it is owed (as a waiting stream does)."""

    def __init__(self, loop: SteppedLoop) -> None:
        self.loop = loop
        self.last_sent = loop.now
        self.owed: list[float] = []

    def owe_progress(self) -> None:
        self.owed.append(self.loop.now)
        self.last_sent = self.loop.now


def test_pacer_keeps_every_stream_within_the_interval_on_one_timer() -> None:
    loop = SteppedLoop()
    pacer = ProgressPacer(10.0)
    idle, busy = QuietStream(loop), QuietStream(loop)
    for stream in (idle, busy):
        pacer.add(stream, loop)  # type: ignore[arg-type]
    loop.run_until(3.0)
    late = QuietStream(loop)
    pacer.add(late, loop)  # type: ignore[arg-type]
    for second in range(4, 31):  # `busy` sends something every second
        loop.run_until(second)
        busy.last_sent = loop.now
    assert len(loop.timers) == 1  # one timer for all the streams
    assert busy.owed == []
    assert idle.owed == pytest.approx([9.0, 18.0, 27.0])  # quiet for 9 s of the 10
    assert late.owed == pytest.approx([12.0, 21.0, 30.0])
    for stream in (idle, busy, late):
        pacer.discard(stream)  # type: ignore[arg-type]
    assert loop.timers == []  # no streams, no timer


async def test_a_stream_cancelled_while_waiting_costs_no_other_watcher_its_event() -> None:
    registry, hub, _ = hub_on_fake_clock()
    watchers = [hub.watch(ALL) for _ in range(20)]
    for watcher in watchers:
        drain(watcher)
    waiting = asyncio.ensure_future(watchers[0].next_batch())
    await asyncio.sleep(0)  # waiting for a change
    waiting.cancel()  # its waiter is cancelled now; the stream's cleanup runs later
    register(registry, "game", "game-1")
    assert [w.backlog for w in watchers[1:]] == [1] * 19
    with pytest.raises(asyncio.CancelledError):
        await waiting


def test_resume_serves_exactly_the_history_it_holds() -> None:
    registry, hub, _ = hub_on_fake_clock(watch_history_size=3)
    start = registry.revision

    def first(revision: int) -> WatchBatch | None:
        watcher = hub.watch(WatchSelector(start_revision=revision))
        batch = watcher.poll()
        watcher.close()
        return batch

    assert first(start) is None  # up to date: nothing owed
    for revision in (start - 1, start + 1):  # from before this registry, ahead of it
        batch = first(revision)
        assert batch is not None
        assert batch.reset
    for n in range(5):
        register(registry, "game", f"game-{n}")
    gone = first(start + 1)  # its next change fell out of the history
    assert gone is not None
    assert gone.reset
    tail = first(start + 2)
    assert tail is not None
    assert not tail.reset
    assert [e.revision for e in tail.events] == [start + 3, start + 4, start + 5]
    assert first(registry.revision) is None
