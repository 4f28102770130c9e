"""The SQLite store when things go wrong: a full disk, a second server on the same file, a
damaged file, unusable paths and malformed settings."""

from __future__ import annotations

import signal
import sqlite3
import sys
from pathlib import Path

import grpc
import httpx
import pytest

from discovery.testing import SCRIPT, ServerProcess
from discovery.v1 import discovery_pb2 as pb
from tests.conftest import AUTH, GRPC_AUTH, registration
from tests.store_processes import clients, one_line_error, records, server_on, store_env

#: Runs the console script with a file-size limit (what a nearly full disk looks like to it).
LIMITED = (
    "import os, resource, sys; "
    "limit = int(sys.argv[2]); "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
    "os.execv(sys.argv[1], sys.argv[1:2])"
)
BIG = {f"key-{n}": "x" * 1000 for n in range(60)}


async def test_a_full_disk_refuses_writes_and_applies_none_of_them(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    command = [sys.executable, "-c", LIMITED, str(SCRIPT), str(400_000)]
    acknowledged: list[str] = []
    async with (
        await ServerProcess.start(env=store_env(path), command=command) as process,
        clients(process) as (rest, stub),
    ):
        refused: httpx.Response | None = None
        for n in range(60):
            body = registration(instance=f"big-{n}", metadata=BIG)
            answer = await rest.post("/v1/discovery/register", json=body, headers=AUTH)
            if answer.status_code == 503:
                refused = answer
                break
            assert answer.status_code == 200, answer.text
            acknowledged.append(f"big-{n}")
        assert refused is not None, "the file-size limit was never reached"
        assert acknowledged, "not even one write fit under the limit"
        assert isinstance(refused.json()["detail"], str)
        before = await records(rest)
        assert [i["instance_id"] for i in before["game"]] == acknowledged

        # The room the refused write lacked may still take a transaction of fewer pages (one
        # that splits no page): write over gRPC until the store refuses one too.
        refused_rpc: grpc.aio.AioRpcError | None = None
        for n in range(60):
            request = pb.RegisterRequest(
                service_name="game",
                instance_id=f"grpc-{n}",
                host="10.0.0.1",
                port=1,
                health_endpoint="",  # heartbeat-only, as the REST ones: healthy at once
                metadata=BIG,
            )
            try:
                await stub.Register(request, metadata=GRPC_AUTH)
            except grpc.aio.AioRpcError as exc:
                refused_rpc = exc
                break
            acknowledged.append(f"grpc-{n}")
        assert refused_rpc is not None, "the store took every gRPC write past its limit"
        assert refused_rpc.code() is grpc.StatusCode.UNAVAILABLE
        # Nothing refused was applied; reads and heartbeats go on.
        now = await records(rest)
        assert [i["instance_id"] for i in now["game"]] == acknowledged
        if len(acknowledged) == len(before["game"]):
            assert now == before
        beat = {"service_name": "game", "instance_id": acknowledged[0]}
        assert (await rest.post("/v1/discovery/heartbeat", json=beat, headers=AUTH)).is_success
        healthy = await rest.get("/v1/discovery/services/game/healthy")
        assert len(healthy.json()["healthy_instances"]) == len(acknowledged)
        assert await process.stop() == 0

    async with server_on(path) as process, clients(process) as (rest, _):
        after = await records(rest)
        assert [i["instance_id"] for i in after["game"]] == acknowledged


async def test_a_second_server_on_the_same_file_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    async with server_on(path) as first, clients(first) as (rest, _):
        answer = await rest.post("/v1/discovery/register", json=registration(), headers=AUTH)
        assert answer.status_code == 200
        second = await ServerProcess.start(env=store_env(path), wait=False)
        assert await second.wait() == 1
        assert "in use by another process" in one_line_error(second)
        # The first one serves on, its state untouched.
        assert list(await records(rest)) == ["game"]
        assert await first.stop() == 0


async def _refused(store: str, status: int) -> str:
    process = await ServerProcess.start(env={"SERVICE_DISCOVERY_STORE": store}, wait=False)
    async with process:
        assert await process.wait() == status, process.output
        return one_line_error(process)


async def test_a_damaged_file_stops_start_up(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    path.write_bytes(b"this is not a database, just bytes " * 400)
    line = await _refused(f"sqlite:{path}", 1)
    assert "damaged" in line
    assert str(path) in line
    assert path.read_bytes().startswith(b"this is not a database")  # left as it was


async def test_a_foreign_database_is_not_taken_for_an_empty_store(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as other:
        other.execute("CREATE TABLE accounts (id INTEGER)")
    other.close()
    assert "not a service discovery store" in await _refused(f"sqlite:{path}", 1)


async def test_a_store_with_damaged_rows_stops_start_up(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    async with server_on(path) as process, clients(process) as (rest, _):
        answer = await rest.post("/v1/discovery/register", json=registration(), headers=AUTH)
        assert answer.status_code == 200
        assert await process.stop() == 0
    with sqlite3.connect(path) as db:
        db.execute("UPDATE instances SET metadata = '[1, 2]', status = 'sleepy'")
    db.close()
    assert "damaged" in await _refused(f"sqlite:{path}", 1)


async def test_unusable_paths_stop_start_up_with_one_line(tmp_path: Path) -> None:
    regular = tmp_path / "file"
    regular.write_text("x")
    line = await _refused(f"sqlite:{regular}/registry.db", 1)
    assert "not a directory" in line
    assert "is a directory" in await _refused(f"sqlite:{tmp_path}", 1)


@pytest.mark.parametrize(
    "value", ["sqlite:", "postgres://x", "etcd://", "etcd://127.0.0.1", "etcd://h:1/prefix/"]
)
async def test_malformed_stores_exit_2_naming_the_variable(value: str) -> None:
    line = await _refused(value, 2)
    assert "SERVICE_DISCOVERY_STORE" in line


async def test_sigint_exits_0_and_releases_the_file(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    async with server_on(path) as process:
        assert await process.stop(signal.SIGINT) == 0
    async with server_on(path) as process:
        assert "(0 instances restored)" in process.output
