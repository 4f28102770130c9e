"""Shared fixtures: an in-process server on free ports with REST and gRPC clients."""

from __future__ import annotations

import signal
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar, cast

import grpc
import httpx
import pytest

from discovery.core.model import Instance, Registration
from discovery.server import DiscoveryServer
from discovery.testing import run_server, test_settings
from discovery.v1 import discovery_pb2_grpc as pb_grpc
from tests.etcd_support import Etcd, started_etcd

SECRET = "test-secret"
AUTH = {"Authorization": f"Bearer {SECRET}"}
GRPC_AUTH = (("authorization", f"Bearer {SECRET}"),)

ServerFactory = Callable[..., AbstractAsyncContextManager[DiscoveryServer]]

# A test run started in the background (`make test &`, nohup) inherits SIGINT ignored, and every
# console script it starts would too: `discoveryctl watch` would then never see the Ctrl-C the
# tests send it. The scripts are tested as started from a terminal, with SIGINT's default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

#: What `read()` on a grpc.aio stream returns at its end (grpc-stubs does not declare it).
EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]

if TYPE_CHECKING:
    # What the stub is on an aio channel; the stubs (.pyi) alone name it.
    from discovery.v1.discovery_pb2_grpc import DiscoveryServiceAsyncStub

    Stub: TypeAlias = DiscoveryServiceAsyncStub
else:
    Stub = pb_grpc.DiscoveryServiceStub

Message = TypeVar("Message")


async def read_message(
    call: grpc.aio.UnaryStreamCall[Any, Message] | grpc.aio.StreamStreamCall[Any, Message],
) -> Message:
    """The next message of a grpc.aio stream, which must not have ended (grpc-stubs types
    `read()` as `EOF | message`, which is `object`)."""
    message = await call.read()
    assert message is not EOF, "the stream ended"
    return cast(Message, message)


@pytest.fixture(scope="session")
def etcd_for_contract() -> Iterator[Etcd]:
    """One etcd for every contract test run in etcd mode (each server gets its own prefix)."""
    with started_etcd() as etcd:
        yield etcd


@pytest.fixture
def store_mode(request: pytest.FixtureRequest) -> str:
    """Where `make_server` keeps state; modules that run their contract tests against a replica
    on etcd too parametrize it (`ON_EVERY_STORE`)."""
    return str(getattr(request, "param", "memory"))


#: `pytestmark` of the modules whose tests run against an in-memory server and a replica on etcd.
ON_EVERY_STORE = pytest.mark.parametrize("store_mode", ["memory", "etcd"], indirect=True)


@pytest.fixture
def make_server(request: pytest.FixtureRequest, store_mode: str) -> ServerFactory:
    """`async with make_server(**settings) as server`: a server with the test secret by default
    (in etcd mode: a replica on its own prefix of the session's etcd)."""
    etcd: Etcd | None = None
    if store_mode == "etcd":
        etcd = request.getfixturevalue("etcd_for_contract")

    def factory(**changes: Any) -> AbstractAsyncContextManager[DiscoveryServer]:
        changes.setdefault("secret", SECRET)
        if etcd is not None:
            store = etcd.store(f"/contract-{uuid.uuid4().hex}")
            changes.setdefault("settings", test_settings(store=store, replica_ttl=2.0))
        return run_server(**changes)

    return factory


@pytest.fixture
async def server(make_server: ServerFactory) -> AsyncIterator[DiscoveryServer]:
    async with make_server() as running:
        yield running


@pytest.fixture
async def rest(server: DiscoveryServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.rest_url, timeout=10) as client:
        yield client


@pytest.fixture
async def stub(server: DiscoveryServer) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.DiscoveryServiceStub(channel)


def registration(service: str = "game", instance: str = "game-1", **fields: Any) -> dict[str, Any]:
    """A REST register body with sensible defaults."""
    body: dict[str, Any] = {
        "service_name": service,
        "instance_id": instance,
        "host": "127.0.0.1",
        "port": 8080,
        "health_endpoint": None,
        "metadata": {"version": "1.0.0"},
    }
    body.update(fields)
    return body


async def register(
    client: httpx.AsyncClient, expect: int | None = 200, **fields: Any
) -> httpx.Response:
    """POST `registration(**fields)` with the secret; checks the status is `expect` unless None."""
    response = await client.post(
        "/v1/discovery/register", json=registration(**fields), headers=AUTH
    )
    if expect is not None:
        assert response.status_code == expect, response.text
    return response


async def add(server: DiscoveryServer, service: str, instance: str, **fields: Any) -> Instance:
    """Register straight through the core: heartbeat-only at 127.0.0.1:8080 unless told."""
    fields.setdefault("host", "127.0.0.1")
    fields.setdefault("port", 8080)
    fields.setdefault("health_endpoint", None)
    return (await server.core.register(Registration(service, instance, **fields))).instance
