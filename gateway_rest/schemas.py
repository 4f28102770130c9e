"""Pydantic request and response models of the legacy `/v1/discovery` API.

Request validators call the core's checks (`discovery.core.validation`), so REST and gRPC accept and
refuse exactly the same values; a refusal is FastAPI's usual 422 naming the field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field, StrictStr, field_validator

from discovery.core import validation
from discovery.core.clock import iso8601
from discovery.core.errors import InvalidArgument
from discovery.core.model import DEFAULT_HEALTH_ENDPOINT, Alert, Instance, Registration

T = TypeVar("T")
R = TypeVar("R")


def _checked(check: Callable[[T], R], value: T) -> R:
    try:
        return check(value)
    except InvalidArgument as exc:
        raise ValueError(exc.reason) from None


def _reject_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    return value


class InstanceName(BaseModel):
    """The two names that identify an instance."""

    # The checks themselves are the core's (validators below); `json_schema_extra` only
    # publishes them in the OpenAPI document.
    service_name: str = Field(
        examples=["game"],
        json_schema_extra={"pattern": validation.SERVICE_NAME_PATTERN, "maxLength": 128},
    )
    instance_id: str = Field(
        examples=["game-1"],
        json_schema_extra={"pattern": validation.INSTANCE_ID_PATTERN, "maxLength": 256},
    )

    @field_validator("service_name")
    @classmethod
    def _service_name(cls, value: str) -> str:
        return _checked(validation.check_service_name, value)

    @field_validator("instance_id")
    @classmethod
    def _instance_id(cls, value: str) -> str:
        return _checked(validation.check_instance_id, value)


class RegisterRequest(InstanceName):
    """An instance to register (or to update, when it is registered already)."""

    host: str = Field(
        examples=["10.0.0.5"],
        description="A DNS name (RFC 1123), an IPv4 address or an IPv6 address (no brackets).",
        json_schema_extra={
            "anyOf": [{"format": "hostname"}, {"format": "ipv4"}, {"format": "ipv6"}],
            "minLength": 1,
            "maxLength": validation.MAX_HOST,
        },
    )
    port: int = Field(examples=[8080], json_schema_extra={"minimum": 1, "maximum": 65535})
    health_endpoint: str | None = Field(
        DEFAULT_HEALTH_ENDPOINT,
        description="Path probed with GET; null for a heartbeat-only instance.",
        json_schema_extra={
            "pattern": validation.HEALTH_ENDPOINT_PATTERN,
            "maxLength": validation.MAX_HEALTH_ENDPOINT,
        },
    )
    metadata: dict[StrictStr, StrictStr] = Field(
        default_factory=dict,
        json_schema_extra={
            "maxProperties": validation.MAX_METADATA_ENTRIES,
            "propertyNames": {"minLength": 1, "maxLength": validation.MAX_METADATA_KEY},
            "additionalProperties": {
                "type": "string",
                "maxLength": validation.MAX_METADATA_VALUE,
            },
        },
    )

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return _checked(validation.check_host, value)

    @field_validator("port", mode="before")
    @classmethod
    def _port_type(cls, value: Any) -> Any:
        return _reject_bool(value)

    @field_validator("port")
    @classmethod
    def _port(cls, value: int) -> int:
        return _checked(validation.check_port, value)

    @field_validator("health_endpoint")
    @classmethod
    def _health_endpoint(cls, value: str | None) -> str | None:
        return None if value is None else _checked(validation.check_health_endpoint, value)

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str]) -> dict[str, str]:
        return _checked(validation.check_metadata, value)

    def to_registration(self) -> Registration:
        return Registration(
            self.service_name,
            self.instance_id,
            self.host,
            self.port,
            self.health_endpoint,
            self.metadata,
        )


class HeartbeatRequest(InstanceName):
    """A heartbeat, optionally with the load the instance reports."""

    load_percentage: float | None = Field(
        None, description="Pushed load in 0..1.", json_schema_extra={"minimum": 0, "maximum": 1}
    )

    @field_validator("load_percentage", mode="before")
    @classmethod
    def _load_type(cls, value: Any) -> Any:
        return _reject_bool(value)

    @field_validator("load_percentage")
    @classmethod
    def _load(cls, value: float | None) -> float | None:
        return None if value is None else _checked(validation.check_load, value)


HealthWord = Literal["healthy", "unhealthy", "unknown"]


class InstanceRecord(BaseModel):
    """An instance as the legacy API shows it."""

    service_name: str
    instance_id: str
    host: str
    port: int
    health_endpoint: str | None
    status: HealthWord
    load_percentage: float
    critical_load: bool
    metadata: dict[str, str]
    registered_at: str
    last_heartbeat: str | None
    last_health_check: str | None

    @classmethod
    def of(cls, instance: Instance) -> InstanceRecord:
        return cls.model_construct(
            service_name=instance.service_name,
            instance_id=instance.instance_id,
            host=instance.host,
            port=instance.port,
            health_endpoint=instance.health_endpoint,
            status=instance.status.value,
            load_percentage=instance.load_percentage,
            critical_load=instance.critical_load,
            metadata=instance.metadata,
            registered_at=iso8601(instance.registered_at),
            last_heartbeat=iso_or_none(instance.last_heartbeat),
            last_health_check=iso_or_none(instance.last_health_check),
        )


def iso_or_none(timestamp: float | None) -> str | None:
    return None if timestamp is None else iso8601(timestamp)


def seconds(value: float) -> int | float:
    """Whole seconds as an integer (`60`, not `60.0`)."""
    return int(value) if float(value).is_integer() else value


class RegisterResponse(BaseModel):
    success: bool
    message: str
    instance: InstanceRecord
    heartbeat_interval_seconds: int | float
    ttl_seconds: int | float


class Outcome(BaseModel):
    success: bool
    message: str


class ServicesResponse(BaseModel):
    services: dict[str, list[InstanceRecord]]


class ServiceResponse(BaseModel):
    service_name: str
    instances: list[InstanceRecord]


class HealthyResponse(BaseModel):
    service_name: str
    healthy_instances: list[InstanceRecord]


class AlertRecord(BaseModel):
    service_name: str
    instance_id: str
    load_percentage: float
    threshold: float
    since: str

    @classmethod
    def of(cls, alert: Alert) -> AlertRecord:
        return cls.model_construct(
            service_name=alert.service_name,
            instance_id=alert.instance_id,
            load_percentage=alert.load_percentage,
            threshold=alert.threshold,
            since=iso8601(alert.since),
        )


class AlertsResponse(BaseModel):
    alerts: list[AlertRecord]


class OwnHealth(BaseModel):
    status: Literal["healthy", "shutting_down"]
    service: Literal["service-discovery"] = "service-discovery"
    load_percentage: float


class Detail(BaseModel):
    """An error with a human-readable `detail`."""

    detail: str
