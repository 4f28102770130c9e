"""The store seam in-process: writes refused by the store change nothing, concurrent writes
leave store and registry in agreement, instance limits hold across the store's await."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import grpc
import httpx
import pytest

from discovery.core.model import Registration
from discovery.core.store.sqlite import SqliteStore
from discovery.testing import eventually, run_server
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc
from tests.conftest import AUTH, GRPC_AUTH, SECRET, registration
from tests.stores import RecordingStore


async def test_a_refused_write_changes_nothing_over_rest_and_grpc() -> None:
    store = RecordingStore()
    async with (
        run_server(store=store, secret=SECRET) as server,
        httpx.AsyncClient(base_url=server.rest_url, timeout=10) as rest,
        grpc.aio.insecure_channel(server.grpc_target) as channel,
    ):
        stub = pb_grpc.DiscoveryServiceStub(channel)
        kept = await rest.post("/v1/discovery/register", json=registration(), headers=AUTH)
        assert kept.status_code == 200
        before = (await rest.get("/v1/discovery/services")).json()
        revision = server.core.revision
        store.failing = True

        moved = registration(host="10.9.9.9")
        answer = await rest.post("/v1/discovery/register", json=moved, headers=AUTH)
        assert answer.status_code == 503
        assert isinstance(answer.json()["detail"], str)
        answer = await rest.post(
            "/v1/discovery/register", json=registration(instance="new"), headers=AUTH
        )
        assert answer.status_code == 503
        answer = await rest.delete("/v1/discovery/unregister/game/game-1", headers=AUTH)
        assert answer.status_code == 503
        request = pb.RegisterRequest(
            service_name="game", instance_id="grpc-1", host="10.0.0.1", port=1
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Register(request, metadata=GRPC_AUTH)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Unregister(
                pb.UnregisterRequest(service_name="game", instance_id="game-1"),
                metadata=GRPC_AUTH,
            )
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE

        # Nothing changed, and reads and heartbeats go on.
        assert (await rest.get("/v1/discovery/services")).json() == before
        assert server.core.revision == revision
        beat = {"service_name": "game", "instance_id": "game-1"}
        answer = await rest.post("/v1/discovery/heartbeat", json=beat, headers=AUTH)
        assert answer.status_code == 200
        assert list(store.rows) == [("game", "game-1")]
        assert store.rows["game", "game-1"].host == "127.0.0.1"


async def test_concurrent_writes_leave_store_and_registry_in_agreement() -> None:
    # Registrations, unregistrations, clients hanging up mid-write and expiries (a short TTL)
    # interleave over a store that commits in batches after random delays. Whenever the store
    # has written everything it was asked, it must hold exactly what the registry holds.
    store = RecordingStore(delay=0.02, seed=7)
    rng = random.Random(11)
    keys = [f"i-{n}" for n in range(30)]
    async with run_server(store=store, secret=SECRET, registration_ttl=0.2) as server:
        core = server.core
        async with httpx.AsyncClient(base_url=server.rest_url, timeout=30) as rest:

            async def client(steps: int) -> None:
                for _ in range(steps):
                    instance = rng.choice(keys)
                    if rng.random() < 0.7:
                        body = registration(instance=instance, port=rng.choice((80, 81)))
                        await rest.post("/v1/discovery/register", json=body, headers=AUTH)
                    else:
                        path = f"/v1/discovery/unregister/game/{instance}"
                        await rest.delete(path, headers=AUTH)

            async def hangs_up(steps: int) -> None:
                # A client that hangs up mid-write: the write lands in both or in neither.
                for n in range(steps):
                    task = asyncio.ensure_future(core.register(core_registration(f"h-{n}", 80)))
                    await asyncio.sleep(rng.uniform(0, 0.02))
                    task.cancel()

            await asyncio.gather(*(client(50) for _ in range(8)), hangs_up(60))
            await eventually(lambda: store.idle, within=10)
            registry = {i.key: i for i in core.registry.all_instances()}
            assert list(registry) == list(store.rows)
            for mine, stored in zip(registry.values(), store.rows.values(), strict=True):
                assert (mine.address, mine.registered_at) == (stored.address, stored.registered_at)
            # Some of the abandoned registrations were written (and so had to be applied).
            assert any(key[1].startswith("h-") for key in store.written)


async def test_writes_whose_callers_hang_up_are_applied_when_the_sqlite_file_has_them(
    tmp_path: Path,
) -> None:
    # The SQLite store hands back its writer's own futures: a registration whose caller is
    # cancelled while the write is on its way is applied from the commit, or written nowhere.
    path = tmp_path / "registry.db"
    rng = random.Random(5)
    gone: list[tuple[str, str]] = []
    async with run_server(store=SqliteStore(path), secret=SECRET) as server:
        core = server.core

        async def hangs_up(client: int) -> None:
            for n in range(40):
                registration = core_registration(f"h-{client}-{n}", 80)
                task = asyncio.ensure_future(core.register(registration))
                await asyncio.sleep(rng.uniform(0, 0.004))
                if task.cancel():
                    gone.append((registration.service_name, registration.instance_id))

        await asyncio.gather(*(hangs_up(c) for c in range(4)))
        await eventually(lambda: not core.registry.writing, within=10)
        registered = [i.key for i in core.registry.all_instances()]
    reopened = SqliteStore(path)
    try:
        restored = await reopened.open(lambda: 0)
    finally:
        await reopened.close()
    assert [i.key for i in restored.instances] == registered
    assert set(gone) & set(registered), "no write of a caller that hung up was applied"


def core_registration(instance: str, port: int) -> Registration:
    return Registration("game", instance, "127.0.0.1", port, None, {"version": "1"})


async def test_instance_limits_hold_across_the_store_write() -> None:
    store = RecordingStore(delay=0.02, seed=3)
    async with (
        run_server(
            store=store, secret=SECRET, max_instances_per_service=3, max_instances=5
        ) as server,
        httpx.AsyncClient(base_url=server.rest_url, timeout=10) as rest,
    ):

        async def register(service: str, n: int) -> int:
            body = registration(service=service, instance=f"{service}-{n}")
            answer = await rest.post("/v1/discovery/register", json=body, headers=AUTH)
            return answer.status_code

        codes = await asyncio.gather(
            *(register("a", n) for n in range(10)), *(register("b", n) for n in range(10))
        )
        assert sorted(codes).count(200) == 5
        assert set(codes) == {200, 429}
        assert len(server.core.registry) == 5
        assert sorted(store.rows) == sorted(i.key for i in server.core.registry.all_instances())
        per_service = {name: len(found) for name, found in server.core.services().items()}
        assert all(count <= 3 for count in per_service.values())
