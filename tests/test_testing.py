"""The helpers `discovery.testing` ships for users' own tests."""

from __future__ import annotations

import signal

import httpx
import pytest

from discovery.testing import ServerProcess, eventually


async def test_server_process_serves_and_stops_cleanly() -> None:
    async with await ServerProcess.start(env={"SERVICE_DISCOVERY_STORE": "memory"}) as process:
        async with httpx.AsyncClient(base_url=process.rest_url) as client:
            assert (await client.get("/health")).status_code == 200
        assert await process.stop(signal.SIGTERM) == 0
    assert "REST listening on 127.0.0.1:" in process.output


async def test_server_process_that_cannot_start_says_why() -> None:
    with pytest.raises(AssertionError, match="HEALTH_CHECK_INTERVAL_SECONDS"):
        await ServerProcess.start(env={"HEALTH_CHECK_INTERVAL_SECONDS": "abc"})


async def test_eventually_waits_for_a_condition_and_gives_up() -> None:
    ticks: list[int] = []

    def counted() -> bool:
        ticks.append(1)
        return len(ticks) >= 3

    assert await eventually(counted) >= 0
    with pytest.raises(TimeoutError):
        await eventually(lambda: False, within=0.05)
