"""`GET /v1/discovery/sd/prometheus`: the registry as Prometheus HTTP service discovery.

The answer is the `http_sd_configs` format: a JSON list of target groups, one per instance,
`{"targets": ["HOST:PORT"], "labels": {"__meta_discovery_service": ..., ...}}`. Prometheus
drops `__meta_*` labels after relabelling, so a scrape config keeps what it wants of them
(README, "Prometheus"). Metadata keys become label names by replacing every character outside
`[a-zA-Z0-9_]` with `_`; when two keys reduce to the same name, the first one registered wins.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from discovery.core.model import HealthStatus, Instance
from gateway_rest.routers import Core
from gateway_rest.sse import ServiceNames

router = APIRouter(prefix="/v1/discovery", tags=["discovery"])

META = "__meta_discovery_"
_NOT_LABEL = re.compile(r"[^a-zA-Z0-9_]")


class TargetGroup(BaseModel):
    """One instance as a Prometheus target group."""

    targets: list[str]
    labels: dict[str, str]


@router.get("/sd/prometheus")
async def prometheus_targets(
    core: Core,
    service: ServiceNames = [],  # noqa: B006  # FastAPI copies defaults per request
    healthy_only: Annotated[
        bool, Query(description="Only healthy instances (the default); false for all.")
    ] = True,
) -> list[TargetGroup]:
    """Instances as Prometheus `http_sd_configs` target groups: every service, or those named
    (`?service=a&service=b`); healthy instances only unless `healthy_only=false`."""
    if service:
        found = core.services()
        chosen: Iterable[Instance] = (
            i for name in dict.fromkeys(service) for i in found.get(name, ())
        )
    else:
        chosen = (i for instances in core.services().values() for i in instances)
    return [
        target_group(instance)
        for instance in chosen
        if not healthy_only or instance.status is HealthStatus.HEALTHY
    ]


def target_group(instance: Instance) -> TargetGroup:
    """The target group of one instance (an IPv6 host goes in brackets)."""
    host = f"[{instance.host}]" if ":" in instance.host else instance.host
    labels = {
        META + "service": instance.service_name,
        META + "instance_id": instance.instance_id,
        META + "status": instance.status.value,
    }
    for key, value in instance.metadata.items():
        labels.setdefault(META + "metadata_" + _NOT_LABEL.sub("_", key), value)
    return TargetGroup.model_construct(targets=[f"{host}:{instance.port}"], labels=labels)
