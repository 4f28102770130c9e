"""The `/v1/discovery` endpoints and `/health`: translation between HTTP and the core only."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from discovery.core.errors import InstanceNotFound
from discovery.core.facade import DiscoveryCore
from discovery.core.metrics import REST
from gateway_rest.records import EncodedRecords, JSONBytes
from gateway_rest.routing import WRITE
from gateway_rest.schemas import (
    AlertRecord,
    AlertsResponse,
    Detail,
    HealthyResponse,
    HeartbeatRequest,
    InstanceRecord,
    Outcome,
    OwnHealth,
    RegisterRequest,
    RegisterResponse,
    ServiceResponse,
    ServicesResponse,
    seconds,
)

_WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Detail, "description": "Body that cannot be decoded"},
    401: {"model": Detail, "description": "Missing or invalid credentials"},
    413: {"model": Detail, "description": "Body over 64 KiB"},
}


#: The heartbeat's answer, one object: the fast path sends it pre-encoded (gateway_rest.hot).
HEARTBEAT_OK = Outcome(success=True, message="Heartbeat updated successfully")


async def get_core(request: Request) -> DiscoveryCore:
    # async: a plain `def` dependency would be run in a worker thread on every request.
    core: DiscoveryCore = request.app.state.core
    return core


Core = Annotated[DiscoveryCore, Depends(get_core)]


async def get_records(request: Request) -> EncodedRecords:
    records: EncodedRecords = request.app.state.records
    return records


Records = Annotated[EncodedRecords, Depends(get_records)]

router = APIRouter(prefix="/v1/discovery", tags=["discovery"])
health_router = APIRouter(tags=["health"])


@router.post(
    "/register",
    openapi_extra=WRITE,
    responses={**_WRITE_ERRORS, 429: {"model": Detail, "description": "Instance limit reached"}},
)
async def register(body: RegisterRequest, core: Core) -> RegisterResponse:
    """Register an instance, or update it when it is registered already."""
    outcome = await core.register(body.to_registration(), REST)
    instance = outcome.instance
    return RegisterResponse(
        success=True,
        message=f"Service {instance.service_name}:{instance.instance_id} registered successfully",
        instance=InstanceRecord.of(instance),
        heartbeat_interval_seconds=seconds(core.settings.heartbeat_interval),
        ttl_seconds=seconds(core.settings.registration_ttl),
    )


@router.post(
    "/heartbeat",
    response_model=Outcome,
    openapi_extra=WRITE,
    responses={**_WRITE_ERRORS, 404: {"model": Outcome, "description": "Unknown instance"}},
)
async def heartbeat(body: HeartbeatRequest, core: Core) -> Outcome | JSONResponse:
    """Keep an instance's registration alive, optionally reporting its load."""
    try:
        core.heartbeat(body.service_name, body.instance_id, body.load_percentage, REST)
    except InstanceNotFound:
        return JSONResponse(  # the legacy 404 shape: not {"detail": ...}
            status_code=404, content={"success": False, "message": "Service not found"}
        )
    return HEARTBEAT_OK


@router.delete(
    "/unregister/{service_name}/{instance_id}",
    openapi_extra=WRITE,
    responses={**_WRITE_ERRORS, 404: {"model": Detail, "description": "Unknown instance"}},
)
async def unregister(service_name: str, instance_id: str, core: Core) -> Outcome:
    """Remove an instance."""
    await core.unregister(service_name, instance_id, REST)
    return Outcome(success=True, message="Service unregistered successfully")


# The reads answer from the encoded records (`gateway_rest.records`): a read of a service that
# changed encodes only the instances that changed.


@router.get("/services", response_model=ServicesResponse)
async def list_services(core: Core, records: Records) -> JSONBytes:
    """Every service with all of its instances, in registration order."""
    return JSONBytes(records.services(core.services()))


@router.get(
    "/services/{service_name}", response_model=ServiceResponse, responses={404: {"model": Detail}}
)
async def get_service(service_name: str, core: Core, records: Records) -> JSONBytes:
    """All instances of one service, whatever their health."""
    instances = core.instances(service_name)
    envelope = ServiceResponse(service_name=service_name, instances=[])
    return JSONBytes(records.listing(envelope, instances))


@router.get("/services/{service_name}/healthy", response_model=HealthyResponse)
async def healthy_instances(service_name: str, core: Core, records: Records) -> JSONBytes:
    """The instances of one service whose status is healthy (empty when the service is unknown)."""
    envelope = HealthyResponse(service_name=service_name, healthy_instances=[])
    return JSONBytes(records.listing(envelope, core.healthy(service_name)))


@router.get("/alerts")
async def list_alerts(core: Core) -> AlertsResponse:
    """The instances currently at critical load."""
    return AlertsResponse(alerts=[AlertRecord.of(alert) for alert in core.alerts()])


@health_router.get("/health", response_model=OwnHealth, responses={503: {"model": OwnHealth}})
async def own_health(core: Core) -> OwnHealth | JSONResponse:
    """The server's own health and load (share of CPU time used over the last few seconds)."""
    if core.shutting_down:
        return JSONResponse(
            status_code=503,
            content=OwnHealth(status="shutting_down", load_percentage=core.own_load()).model_dump(),
        )
    return OwnHealth(status="healthy", load_percentage=core.own_load())
