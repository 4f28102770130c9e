"""A bare FastAPI app with the same pydantic models and typed returns, and a plain dict store.

No auth, no registry, no health logic: register, heartbeat and the healthy list of a service,
each returning the project's response models (FastAPI's `response_model` from the return type),
on uvicorn with httptools and uvloop as the project's server runs. It is the framework's ceiling
for the REST figures.

python -m bench.baselines.bare_fastapi     # logs "REST listening on 127.0.0.1:PORT"
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from datetime import UTC, datetime

import uvicorn
import uvloop
from fastapi import FastAPI

from bench.baselines import settle_heap
from gateway_rest.schemas import (
    HealthyResponse,
    HeartbeatRequest,
    InstanceRecord,
    Outcome,
    RegisterRequest,
    RegisterResponse,
)


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


def create_app() -> FastAPI:
    app = FastAPI()
    store: dict[tuple[str, str], InstanceRecord] = {}

    @app.post("/v1/discovery/register")
    async def register(body: RegisterRequest) -> RegisterResponse:
        record = InstanceRecord.model_construct(
            service_name=body.service_name,
            instance_id=body.instance_id,
            host=body.host,
            port=body.port,
            health_endpoint=body.health_endpoint,
            status="healthy",
            load_percentage=0.0,
            critical_load=False,
            metadata=body.metadata,
            registered_at=iso(time.time()),
            last_heartbeat=None,
            last_health_check=None,
        )
        store[(body.service_name, body.instance_id)] = record
        return RegisterResponse(
            success=True,
            message="registered",
            instance=record,
            heartbeat_interval_seconds=60,
            ttl_seconds=300,
        )

    @app.post("/v1/discovery/heartbeat")
    async def heartbeat(body: HeartbeatRequest) -> Outcome:
        record = store[(body.service_name, body.instance_id)]
        record.last_heartbeat = iso(time.time())
        return Outcome(success=True, message="Heartbeat updated successfully")

    @app.get("/v1/discovery/services/{service_name}/healthy")
    async def healthy(service_name: str) -> HealthyResponse:
        return HealthyResponse(
            service_name=service_name,
            healthy_instances=[r for (s, _), r in store.items() if s == service_name],
        )

    return app


async def main() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        create_app(), lifespan="off", log_level="warning", access_log=False, http="httptools"
    )
    server = uvicorn.Server(config)
    sock.listen(1024)  # connections wait in the backlog until uvicorn accepts them
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # noqa: ASYNC110  # uvicorn has no event to wait on for this
        await asyncio.sleep(0.005)
    settle_heap()
    print(f"REST listening on 127.0.0.1:{sock.getsockname()[1]}", file=sys.stderr, flush=True)
    await serving


if __name__ == "__main__":
    uvloop.run(main())
