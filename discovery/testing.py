"""Helpers for testing against this server: a fake clock and an in-process server on free ports.

async with run_server(secret="s3cret") as server:
    async with httpx.AsyncClient(base_url=server.rest_url) as client:
        ...
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        ...
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from discovery.core.clock import Clock
from discovery.core.settings import Settings
from discovery.server import DiscoveryServer


class FakeClock:
    """A clock that moves only when told to; wall and monotonic time move together."""

    def __init__(self, wall: float = 1_800_000_000.0, monotonic: float = 10_000.0) -> None:
        self._wall = wall
        self._monotonic = monotonic

    def time(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        self._wall += seconds
        self._monotonic += seconds


def test_settings(**changes: Any) -> Settings:
    """Settings for an in-process server: loopback, free ports, defaults otherwise."""
    return Settings(host="127.0.0.1", rest_port=0, grpc_port=0).replace(**changes)


@contextlib.asynccontextmanager
async def run_server(
    settings: Settings | None = None, clock: Clock | None = None, **changes: Any
) -> AsyncIterator[DiscoveryServer]:
    """Start a server on the running loop (free ports on 127.0.0.1 unless told otherwise)."""
    settings = (settings or test_settings()).replace(**changes)
    server = DiscoveryServer(settings, clock)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


test_settings.__test__ = False  # type: ignore[attr-defined]  # not a pytest test
