"""2,000 registrations from many concurrent clients over both protocols: none lost, none doubled."""

from __future__ import annotations

import asyncio

import grpc
import httpx

from discovery.server import DiscoveryServer
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc
from tests.conftest import AUTH, GRPC_AUTH, registration

PER_PROTOCOL = 1000
CLIENTS = 40


async def rest_client(server: DiscoveryServer, worker: int) -> None:
    async with httpx.AsyncClient(base_url=server.rest_url, timeout=30) as rest:
        for n in range(worker, PER_PROTOCOL, CLIENTS):
            body = registration(service=f"svc-{n % 7}", instance=f"rest-{n}", port=1000 + n)
            response = await rest.post("/v1/discovery/register", json=body, headers=AUTH)
            assert response.status_code == 200, response.text
            beat = {"service_name": f"svc-{n % 7}", "instance_id": f"rest-{n}"}
            response = await rest.post("/v1/discovery/heartbeat", json=beat, headers=AUTH)
            assert response.status_code == 200, response.text


async def grpc_client(server: DiscoveryServer, worker: int) -> None:
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.DiscoveryServiceStub(channel)
        for n in range(worker, PER_PROTOCOL, CLIENTS):
            await stub.Register(
                pb.RegisterRequest(
                    service_name=f"svc-{n % 7}",
                    instance_id=f"grpc-{n}",
                    host="127.0.0.1",
                    port=1000 + n,
                    health_endpoint="",
                ),
                metadata=GRPC_AUTH,
            )
            await stub.Heartbeat(
                pb.HeartbeatRequest(service_name=f"svc-{n % 7}", instance_id=f"grpc-{n}"),
                metadata=GRPC_AUTH,
            )


async def test_concurrent_registrations_over_both_protocols(server: DiscoveryServer) -> None:
    start = server.core.registry.revision
    async with asyncio.timeout(90):
        await asyncio.gather(
            *(rest_client(server, w) for w in range(CLIENTS)),
            *(grpc_client(server, w) for w in range(CLIENTS)),
        )
    async with httpx.AsyncClient(base_url=server.rest_url) as rest:
        services = (await rest.get("/v1/discovery/services")).json()["services"]
    ids = [i["instance_id"] for instances in services.values() for i in instances]
    assert len(ids) == 2 * PER_PROTOCOL
    assert set(ids) == {f"{kind}-{n}" for kind in ("rest", "grpc") for n in range(PER_PROTOCOL)}
    for name, instances in services.items():
        assert all(i["service_name"] == name for i in instances)
        assert all(i["last_heartbeat"] is not None for i in instances)
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        listed = await pb_grpc.DiscoveryServiceStub(channel).ListServices(pb.ListServicesRequest())
    assert sum(len(s.instances) for s in listed.services) == 2 * PER_PROTOCOL
    # One revision per registration; heartbeats alone raise none.
    assert server.core.registry.revision - start == 2 * PER_PROTOCOL
