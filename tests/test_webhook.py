"""The alert webhook sink: payload, ordered delivery, retries, and a bounded queue."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from discovery.core.health.webhook import WebhookSink, alert_payload
from discovery.core.model import Alert
from discovery.testing import eventually

URL = "http://127.0.0.1:9/alerts"
ALERT = Alert("game", "game-1", 0.85, 0.8, 1_800_000_000.25)
AT = 1_800_000_042.5

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


def test_payload() -> None:
    assert alert_payload("alert.raised", ALERT, AT) == {
        "event": "alert.raised",
        "service_name": "game",
        "instance_id": "game-1",
        "load_percentage": 0.85,
        "threshold": 0.8,
        "since": "2027-01-15T08:00:00.250000+00:00",
        "at": "2027-01-15T08:00:42.500000+00:00",
    }


class Receiver:
    """A mock transport answering from a script of statuses (then 200), recording each body."""

    def __init__(self, *statuses: int | type[Exception], hang: bool = False) -> None:
        self.script = list(statuses)
        self.hang = hang
        self.bodies: list[dict[str, Any]] = []
        self.attempts = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.attempts += 1
        if self.hang:
            await asyncio.Event().wait()
        outcome = self.script.pop(0) if self.script else 200
        if isinstance(outcome, type):
            raise outcome("refused")
        if outcome == 200:
            assert request.headers["content-type"] == "application/json"
            self.bodies.append(json.loads(request.content))
        return httpx.Response(outcome)


@asynccontextmanager
async def running(receiver: Receiver, **options: Any) -> AsyncIterator[WebhookSink]:
    options = {"backoff": 0.01, "max_backoff": 0.04, **options}
    sink = WebhookSink(URL, transport=httpx.MockTransport(receiver), **options)
    task = asyncio.create_task(sink.run())
    try:
        yield sink
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_delivers_raise_and_clear_in_order() -> None:
    receiver = Receiver()
    async with running(receiver) as sink:
        sink("alert.raised", ALERT, AT)
        sink("alert.cleared", Alert("game", "game-1", 0.7, 0.8, ALERT.since), AT + 5)
        await eventually(lambda: sink.delivered == 2)
    assert [body["event"] for body in receiver.bodies] == ["alert.raised", "alert.cleared"]
    assert receiver.bodies[1]["load_percentage"] == 0.7
    assert receiver.bodies[1]["since"] == receiver.bodies[0]["since"]


@pytest.mark.parametrize("failure", [503, 500, 429, httpx.ConnectError, httpx.ReadTimeout])
async def test_retries_with_backoff(failure: int | type[Exception]) -> None:
    receiver = Receiver(failure, failure)
    async with running(receiver) as sink:
        started = time.monotonic()
        sink("alert.raised", ALERT, AT)
        sink("alert.cleared", ALERT, AT)
        await eventually(lambda: sink.delivered == 2)
    assert receiver.attempts == 4
    assert [body["event"] for body in receiver.bodies] == ["alert.raised", "alert.cleared"]
    assert time.monotonic() - started >= 0.01 + 0.02


async def test_gives_up_after_the_last_attempt(caplog: pytest.LogCaptureFixture) -> None:
    receiver = Receiver(*[503] * 3)
    async with running(receiver, attempts=3) as sink:
        sink("alert.raised", ALERT, AT)
        sink("alert.cleared", ALERT, AT)
        await eventually(lambda: sink.delivered == 1)
    assert (sink.failed, receiver.attempts) == (1, 4)
    assert [body["event"] for body in receiver.bodies] == ["alert.cleared"]
    assert any("not delivered (HTTP 503)" in r.getMessage() for r in caplog.records)


async def test_a_client_error_is_not_retried() -> None:
    receiver = Receiver(400)
    async with running(receiver) as sink:
        sink("alert.raised", ALERT, AT)
        sink("alert.cleared", ALERT, AT)
        await eventually(lambda: sink.delivered == 1)
    assert (sink.failed, receiver.attempts) == (1, 2)


async def test_a_full_queue_drops_the_oldest(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "discovery.webhook")
    receiver = Receiver(hang=True)
    async with running(receiver, queue_size=3) as sink:
        sink("alert.raised", ALERT, AT)
        await eventually(lambda: receiver.attempts == 1)  # the first is in flight, stuck
        started = time.monotonic()
        for n in range(10):
            sink("alert.raised", Alert("game", f"game-{n}", 0.9, 0.8, AT), AT)
        assert time.monotonic() - started < 0.05  # queuing never waits for the receiver
        assert len(sink) == 3
        assert sink.dropped == 7
        assert [p["instance_id"] for p in sink.pending()] == ["game-7", "game-8", "game-9"]
    full = [r for r in caplog.records if "queue full" in r.getMessage()]
    assert len(full) == 1
    assert any("3 alert notifications were not delivered" in r.getMessage() for r in caplog.records)
