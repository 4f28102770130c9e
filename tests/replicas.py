"""Helpers of the replica tests: server processes on one etcd, and clients that read them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
import httpx

from discovery.testing import ServerProcess
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc
from tests.etcd_support import Etcd

REPLICA_ID = re.compile(r"Replica (\w+) joined")


def replica_env(etcd: Etcd, prefix: str = "/service-discovery", **extra: str) -> dict[str, str]:
    env = {
        "SERVICE_DISCOVERY_STORE": etcd.store(prefix),
        "SERVICE_DISCOVERY_REPLICA_TTL_SECONDS": "2",
        "LOG_LEVEL": "INFO",
    }
    env.update(extra)
    return env


@contextlib.asynccontextmanager
async def replicas(count: int, env: Mapping[str, str]) -> AsyncIterator[list[ServerProcess]]:
    """`count` server processes on the same etcd and prefix; each stopped (or killed) at the end."""
    started = await asyncio.gather(
        *(ServerProcess.start(env=dict(env)) for _ in range(count)), return_exceptions=True
    )
    processes = [p for p in started if isinstance(p, ServerProcess)]
    try:
        for outcome in started:
            if isinstance(outcome, BaseException):
                raise outcome
        yield processes
    finally:
        await asyncio.gather(*(p.stop() for p in processes), return_exceptions=True)


def replica_id(process: ServerProcess) -> str:
    found = REPLICA_ID.search(process.output)
    assert found, process.output
    return found.group(1)


async def instance_ids(client: httpx.AsyncClient, url: str, service: str) -> list[str]:
    answer = await client.get(f"{url}/v1/discovery/services/{service}")
    if answer.status_code == 404:
        return []
    return [i["instance_id"] for i in answer.json()["instances"]]


async def grpc_ids(target: str, service: str) -> list[str]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.DiscoveryServiceStub(channel)
        try:
            reply = await stub.GetService(pb.GetServiceRequest(service_name=service), timeout=5)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.NOT_FOUND:
                return []
            raise
    return [i.instance_id for i in reply.instances]


class GrpcWatch:
    """A gRPC Watch kept in the background: every message received, in order."""

    def __init__(self, target: str, start_revision: int = 0, services: tuple[str, ...] = ()):
        self.messages: list[Any] = []
        self.error: BaseException | None = None
        self._channel = grpc.aio.insecure_channel(target)
        stub = pb_grpc.DiscoveryServiceStub(self._channel)
        request = pb.WatchRequest(service_names=list(services), start_revision=start_revision)
        self._call = stub.Watch(request)
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self._call:
                self.messages.append(message)
        except grpc.aio.AioRpcError as exc:
            self.error = exc

    @property
    def synced(self) -> bool:
        return any(m.synced for m in self.messages)

    def events(self) -> list[tuple[str, str, int]]:
        """(type, instance_id, revision) of every event after the snapshot."""
        out = []
        for message in self.messages:
            if message.reset or not message.synced:
                continue
            for event in message.events:
                kind = pb.EventType.Name(event.type).removeprefix("EVENT_TYPE_")
                out.append((kind, event.instance.instance_id, event.revision))
        return out

    @property
    def revision(self) -> int:
        return max((m.revision for m in self.messages), default=0)

    async def close(self) -> None:
        self._call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._channel.close(None)


class SseWatch:
    """An SSE watch kept in the background: every `data:` object received, with its `id:`."""

    def __init__(self, client: httpx.AsyncClient, url: str, **params: Any) -> None:
        self.events: list[dict[str, Any]] = []
        self._task = asyncio.get_running_loop().create_task(self._read(client, url, params))

    async def _read(self, client: httpx.AsyncClient, url: str, params: dict[str, Any]) -> None:
        async with client.stream("GET", f"{url}/v1/discovery/watch", params=params) as answer:
            async for line in answer.aiter_lines():
                if line.startswith("data:"):
                    self.events.append(json.loads(line[5:]))

    def puts(self) -> list[tuple[str, int]]:
        return [
            (e["instance"]["instance_id"], e["revision"]) for e in self.events if e["type"] == "PUT"
        ]

    @property
    def synced(self) -> bool:
        return any(e["type"] == "SYNCED" for e in self.events)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await self._task
