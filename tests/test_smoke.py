from __future__ import annotations

import httpx

from discovery.v1 import discovery_pb2 as pb
from tests.conftest import AUTH, GRPC_AUTH, Stub, registration


async def test_register_over_rest_seen_over_grpc(rest: httpx.AsyncClient, stub: Stub) -> None:
    response = await rest.post("/v1/discovery/register", json=registration(), headers=AUTH)
    assert response.status_code == 200
    reply = await stub.GetService(pb.GetServiceRequest(service_name="game"))
    assert [i.instance_id for i in reply.instances] == ["game-1"]
    await stub.Register(
        pb.RegisterRequest(service_name="game", instance_id="game-2", host="::1", port=1),
        metadata=GRPC_AUTH,
    )
    body = (await rest.get("/v1/discovery/services/game")).json()
    assert [i["instance_id"] for i in body["instances"]] == ["game-1", "game-2"]
