"""Helpers for tests of the SQLite store against real server processes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import httpx

from discovery.testing import ServerProcess
from discovery.v1 import discovery_pb2_grpc as pb_grpc
from tests.conftest import SECRET


def store_env(path: Path, **extra: str) -> dict[str, str]:
    """The environment of a server keeping its state in the SQLite file `path`."""
    return {
        "SERVICE_DISCOVERY_STORE": f"sqlite:{path}",
        "SERVICE_DISCOVERY_SECRET": SECRET,
        "LOG_LEVEL": "INFO",
        **extra,
    }


@contextlib.asynccontextmanager
async def server_on(
    path: Path, env: Mapping[str, str] | None = None, **kwargs: Any
) -> AsyncIterator[ServerProcess]:
    """A server on the store file `path`, killed if the test left it running."""
    async with await ServerProcess.start(env=store_env(path, **(env or {})), **kwargs) as process:
        yield process


@contextlib.asynccontextmanager
async def clients(
    process: ServerProcess,
) -> AsyncIterator[tuple[httpx.AsyncClient, pb_grpc.DiscoveryServiceAsyncStub]]:
    """A REST client and a gRPC stub for `process`."""
    async with (
        httpx.AsyncClient(base_url=process.rest_url, timeout=10) as rest,
        grpc.aio.insecure_channel(process.grpc_target) as channel,
    ):
        yield rest, async_stub(channel)


def async_stub(channel: grpc.aio.Channel) -> pb_grpc.DiscoveryServiceAsyncStub:
    """The stub of an aio channel, typed as such."""
    return pb_grpc.DiscoveryServiceStub(channel)


async def records(rest: httpx.AsyncClient) -> dict[str, list[dict[str, Any]]]:
    """Every service with its instance records, as `GET /v1/discovery/services` gives them."""
    answer = await rest.get("/v1/discovery/services")
    assert answer.status_code == 200, answer.text
    found: dict[str, list[dict[str, Any]]] = answer.json()["services"]
    return found


def one_line_error(process: ServerProcess) -> str:
    """The single line a server that refused to start logged."""
    lines = [line for line in process.lines if line.strip()]
    assert len(lines) == 1, process.output
    return lines[0]
