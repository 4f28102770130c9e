"""Watch fan-out batches: the events queued for a watcher go out together, in revision order,
each once, the message's revision the last event's; one message object (and one encoding) for
every watcher of a feed; over gRPC and SSE a burst of N changes arrives in fewer than N
messages."""

from __future__ import annotations

import asyncio
import json

import grpc
import httpx

from discovery.core.model import Registration
from discovery.core.watch.hub import WatchSelector
from discovery.server import DiscoveryServer
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc
from tests.conftest import ServerFactory, read_message
from tests.watch_helpers import hub_on_fake_clock, register

BURST = 200


async def test_a_burst_queued_for_a_watcher_goes_out_as_one_message() -> None:
    registry, hub, _ = hub_on_fake_clock()
    watchers = [hub.watch(WatchSelector()) for _ in range(3)]
    for watcher in watchers:
        snapshot = await watcher.next_batch()  # streaming now: live events wait for rounds
        assert snapshot is not None
        assert snapshot.reset
    start = registry.revision
    for n in range(50):
        register(registry, "game", f"game-{n}")
    batches = [await asyncio.wait_for(w.next_batch(), 5) for w in watchers]
    first = batches[0]
    assert first is not None
    assert [e.revision for e in first.events] == list(range(start + 1, start + 51))
    assert first.revision == start + 50
    assert all(batch is first for batch in batches)  # built once, shared (and encoded once)
    for watcher in watchers:
        watcher.close()


async def _burst(server: DiscoveryServer) -> int:
    """Register BURST instances at once; the revision after them."""
    core = server.core
    await asyncio.gather(
        *(
            core.register(Registration("game", f"game-{n}", "10.0.0.1", 80, None))
            for n in range(BURST)
        )
    )
    return core.revision


async def test_a_grpc_watcher_gets_a_burst_in_fewer_messages(make_server: ServerFactory) -> None:
    async with (
        make_server() as server,
        grpc.aio.insecure_channel(server.grpc_target) as channel,
    ):
        call = pb_grpc.DiscoveryServiceStub(channel).Watch(pb.WatchRequest())
        start = (await asyncio.wait_for(read_message(call), 10)).revision
        end = await _burst(server)
        revisions: list[int] = []
        messages = 0
        while not revisions or revisions[-1] < end:
            message = await asyncio.wait_for(read_message(call), 10)
            if message.events:
                messages += 1
                assert message.revision == message.events[-1].revision
                revisions.extend(e.revision for e in message.events)
        assert revisions == list(range(start + 1, end + 1))  # in order, each exactly once
        assert messages < BURST
        call.cancel()


async def test_an_sse_watcher_gets_a_burst_in_fewer_writes(make_server: ServerFactory) -> None:
    async with (
        make_server() as server,
        httpx.AsyncClient(base_url=server.rest_url, timeout=10) as client,
        client.stream("GET", "/v1/discovery/watch") as response,
    ):
        chunks = response.aiter_raw()
        pending = ""

        async def events() -> list[dict[str, int | str]]:
            """The complete SSE events of the next chunk read."""
            nonlocal pending
            pending += (await asyncio.wait_for(anext(chunks), 10)).decode()
            complete, _, pending = pending.rpartition("\n\n")
            lines = complete.splitlines()
            return [json.loads(x[5:]) for x in lines if x.startswith("data:")]

        start = None
        while start is None:  # the snapshot, up to SYNCED
            synced = [_revision(e) for e in await events() if e["type"] == "SYNCED"]
            start = synced[-1] if synced else None
        end = await _burst(server)
        revisions: list[int] = []
        reads = 0
        while not revisions or revisions[-1] != end:
            puts = [_revision(e) for e in await events() if e["type"] == "PUT"]
            reads += bool(puts)
            revisions.extend(puts)
        assert revisions == list(range(start + 1, end + 1))
        assert reads < BURST


def _revision(event: dict[str, int | str]) -> int:
    """An SSE event's revision, which is a JSON number."""
    revision = event["revision"]
    assert isinstance(revision, int), event
    return revision


async def test_a_change_between_subscribing_and_streaming_is_not_held_back() -> None:
    registry, hub, _ = hub_on_fake_clock(watch_progress_interval=10)
    streaming = hub.watch(WatchSelector())
    assert await streaming.next_batch() is not None  # the feed is streaming now
    late = hub.watch(WatchSelector())  # subscribed, not reading yet
    register(registry, "game", "game-1")
    assert await asyncio.wait_for(streaming.next_batch(), 5) is not None  # a round went by
    snapshot = await late.next_batch()
    assert snapshot is not None
    assert snapshot.reset
    live = await asyncio.wait_for(late.next_batch(), 2)  # not stranded until progress is due
    assert live is not None
    assert [e.instance.instance_id for e in live.events] == ["game-1"]
    for watcher in (streaming, late):
        watcher.close()
