"""Every acknowledged register and unregister survives SIGKILL and SIGTERM of the real server
at a random moment during a storm of concurrent writes over REST and gRPC."""

from __future__ import annotations

import asyncio
import random
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from discovery.testing import ServerProcess
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc
from tests.conftest import AUTH, GRPC_AUTH, registration
from tests.store_processes import clients, records, server_on

Key = tuple[str, str]
#: What an instance is registered as (host, port, metadata), or None when it is not registered.
State = tuple[str, int, dict[str, str]] | None

WORKERS = 8
KEYS_PER_WORKER = 6
ROUNDS = 3


@dataclass
class Ledger:
    """What the clients were told: the acknowledged state of each key, and the outcome of the
    write still in flight (unanswered) when the server went away."""

    known: dict[Key, State] = field(default_factory=dict)
    registered_at: dict[Key, str] = field(default_factory=dict)
    in_flight: dict[Key, State] = field(default_factory=dict)
    acknowledged: int = 0

    def check(self, found: dict[Key, dict[str, Any]]) -> None:
        """The restored registry holds exactly the acknowledged state (or, for a key whose
        write was in flight, that write's outcome); then that is what is known."""
        for key in set(self.known) | set(self.in_flight) | set(found):
            record = found.get(key)
            state: State = None
            if record is not None:
                state = (record["host"], record["port"], record["metadata"])
            allowed = [self.known.get(key)]
            if key in self.in_flight:
                allowed.append(self.in_flight[key])
            assert state in allowed, (key, state, allowed)
            if record is not None and state == self.known.get(key) and key in self.registered_at:
                assert record["registered_at"] == self.registered_at[key], key
            self.known[key] = state
            if state is None:
                self.registered_at.pop(key, None)
            elif key not in self.registered_at or key in self.in_flight:
                self.registered_at[key] = record["registered_at"] if record else ""
        self.in_flight.clear()


async def worker(
    n: int,
    ledger: Ledger,
    rest: httpx.AsyncClient,
    stub: pb_grpc.DiscoveryServiceAsyncStub,
    rng: random.Random,
) -> None:
    """Writes on its own keys, one at a time, until the server goes away."""
    service = f"svc-{n % 3}"
    keys = [(service, f"w{n}-{k}") for k in range(KEYS_PER_WORKER)]
    over_grpc = n % 2 == 1
    while True:
        key = rng.choice(keys)
        target: State = None
        if rng.random() < 0.65:
            target = ("127.0.0.1", rng.randint(1000, 1999), {"round": str(rng.random())})
        ledger.in_flight[key] = target
        try:
            if over_grpc:
                done = await grpc_write(stub, key, target)
            else:
                done = await rest_write(rest, key, target, ledger)
        except (httpx.TransportError, grpc.aio.AioRpcError):
            return  # the server went away with this write in flight
        del ledger.in_flight[key]
        if done:
            ledger.known[key] = target
            ledger.acknowledged += 1
            if target is None:
                ledger.registered_at.pop(key, None)


async def rest_write(rest: httpx.AsyncClient, key: Key, target: State, ledger: Ledger) -> bool:
    """True when the write was acknowledged (applied), False when refused (not applied)."""
    if target is None:
        answer = await rest.delete(f"/v1/discovery/unregister/{key[0]}/{key[1]}", headers=AUTH)
        if answer.status_code == 404:
            return True  # already absent: what the ledger wants
    else:
        host, port, metadata = target
        body = registration(key[0], key[1], host=host, port=port, metadata=metadata)
        answer = await rest.post("/v1/discovery/register", json=body, headers=AUTH)
        if answer.status_code == 200:
            ledger.registered_at[key] = answer.json()["instance"]["registered_at"]
    if answer.status_code == 503:
        raise httpx.RemoteProtocolError("shutting down")
    assert answer.status_code == 200, answer.text
    return True


async def grpc_write(stub: pb_grpc.DiscoveryServiceAsyncStub, key: Key, target: State) -> bool:
    if target is None:
        try:
            await stub.Unregister(
                pb.UnregisterRequest(service_name=key[0], instance_id=key[1]),
                metadata=GRPC_AUTH,
                timeout=10,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.NOT_FOUND:
                raise
        return True
    host, port, metadata = target
    request = pb.RegisterRequest(
        service_name=key[0],
        instance_id=key[1],
        host=host,
        port=port,
        health_endpoint="",
        metadata=metadata,
    )
    await stub.Register(request, metadata=GRPC_AUTH, timeout=10)
    return True


async def restored(process: ServerProcess) -> dict[Key, dict[str, Any]]:
    async with httpx.AsyncClient(base_url=process.rest_url, timeout=10) as rest:
        found = await records(rest)
    return {(r["service_name"], r["instance_id"]): r for rs in found.values() for r in rs}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
async def test_acknowledged_writes_survive_a_stop_during_a_storm(tmp_path: Path, sig: int) -> None:
    rng = random.Random(f"storm-{sig}")
    ledger = Ledger()
    path = tmp_path / "registry.db"
    for _ in range(ROUNDS):
        async with server_on(path, {"LOG_LEVEL": "WARNING"}) as process:
            ledger.check(await restored(process))
            async with clients(process) as (rest, stub):
                writers = [
                    asyncio.ensure_future(worker(n, ledger, rest, stub, rng))
                    for n in range(WORKERS)
                ]
                await asyncio.sleep(rng.uniform(0.3, 1.0))  # the random moment of the stop
                status = await process.stop(sig)
                assert status == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
                await asyncio.wait_for(asyncio.gather(*writers), 20)
    async with server_on(path, {"LOG_LEVEL": "WARNING"}) as process:
        ledger.check(await restored(process))
    assert ledger.acknowledged >= 50, "the storm was too small to prove anything"
    assert any(state is not None for state in ledger.known.values())
