"""Liveness over real time through a running server: heartbeat grace, TTL expiry, the sweeper."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import httpx

from discovery.testing import eventually
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc
from tests.conftest import AUTH, ServerFactory, registration

SERVICE = "/v1/discovery/services/game"

PUT, DELETE = pb.EVENT_TYPE_PUT, pb.EVENT_TYPE_DELETE


async def test_silent_instance_turns_unhealthy_then_expires_and_watchers_see_it(
    make_server: ServerFactory,
) -> None:
    async with (
        make_server(heartbeat_interval=0.2, registration_ttl=1.0) as server,
        httpx.AsyncClient(base_url=server.rest_url) as rest,
        grpc.aio.insecure_channel(server.grpc_target) as channel,
    ):
        stub = pb_grpc.DiscoveryServiceStub(channel)
        watch = stub.Watch(pb.WatchRequest(service_names=["game"]))
        snapshot = await watch.read()
        assert isinstance(snapshot, pb.WatchResponse)
        assert snapshot.reset
        assert list(snapshot.events) == []
        loop = asyncio.get_running_loop()
        started = loop.time()
        await rest.post("/v1/discovery/register", json=registration(), headers=AUTH)
        seen: list[tuple[int, int, float]] = []
        async with asyncio.timeout(5):
            while not seen or seen[-1][0] != DELETE:
                message = await watch.read()
                assert isinstance(message, pb.WatchResponse)
                for event in message.events:
                    seen.append((event.type, event.instance.status, loop.time() - started))
        kinds = [(kind, status) for kind, status, _ in seen]
        assert kinds == [
            (PUT, pb.HEALTH_STATUS_HEALTHY),
            (PUT, pb.HEALTH_STATUS_UNHEALTHY),
            (DELETE, pb.HEALTH_STATUS_UNHEALTHY),
        ]
        unhealthy_at, expired_at = seen[1][2], seen[2][2]
        assert 0.35 <= unhealthy_at <= 0.9  # 2 x 0.2 s of silence, then the next sweep
        assert 0.95 <= expired_at <= 1.6  # the 1 s TTL, then the next sweep
        assert (await rest.get("/v1/discovery/services/game")).status_code == 404
        watch.cancel()


async def test_heartbeats_keep_an_instance_healthy_and_registered_past_its_ttl(
    make_server: ServerFactory,
) -> None:
    async with (
        make_server(heartbeat_interval=0.25, registration_ttl=2.0) as server,
        httpx.AsyncClient(base_url=server.rest_url) as rest,
    ):
        await rest.post("/v1/discovery/register", json=registration(), headers=AUTH)
        beat = {"service_name": "game", "instance_id": "game-1"}
        for _ in range(10):  # 2.5 s, past the TTL; each beat well within it, even when slow
            await asyncio.sleep(0.25)
            response = await rest.post("/v1/discovery/heartbeat", json=beat, headers=AUTH)
            assert response.status_code == 200
            healthy = (await rest.get("/v1/discovery/services/game/healthy")).json()
            assert [i["instance_id"] for i in healthy["healthy_instances"]] == ["game-1"]


async def test_a_probed_instance_expires_too_even_if_it_answers_its_probes(
    make_server: ServerFactory,
) -> None:
    async def health(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b'{"status": "healthy", "load_percentage": 0.2}'
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\nConnection: close\r\n\r\n"
            + body
        )
        await writer.drain()
        writer.close()

    target = await asyncio.start_server(health, "127.0.0.1", 0)
    port = target.sockets[0].getsockname()[1]
    async with (
        target,
        make_server(health_check_interval=0.1, registration_ttl=2.0) as server,
        httpx.AsyncClient(base_url=server.rest_url) as rest,
    ):
        body = registration(port=port, health_endpoint="/health")
        await rest.post("/v1/discovery/register", json=body, headers=AUTH)

        async def game_1() -> dict[str, Any]:
            found: dict[str, Any] = (await rest.get(SERVICE)).json()["instances"][0]
            return found

        async def healthy() -> bool:
            return bool((await game_1())["status"] == "healthy")

        await eventually(healthy, within=1.5)
        record = await game_1()
        assert record["load_percentage"] == 0.2
        assert record["last_health_check"] is not None

        # Probes go on, but probes do not extend the TTL.
        async def expired() -> bool:
            return (await rest.get(SERVICE)).status_code == 404

        await eventually(expired)
