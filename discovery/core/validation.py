"""The validation rules both protocols share. Each check raises `InvalidArgument` naming its field.

The REST schemas call the same checks from their validators, so a value is accepted or refused
the same way whichever protocol carried it.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping

from discovery.core.errors import InvalidArgument
from discovery.core.model import Registration

MAX_METADATA_ENTRIES = 64
MAX_METADATA_KEY = 128
MAX_METADATA_VALUE = 1024
MAX_HOST = 253
MAX_HEALTH_ENDPOINT = 1024

#: The rules as regular expressions, also published in the OpenAPI document.
SERVICE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
INSTANCE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,255}$"
HEALTH_ENDPOINT_PATTERN = r"^/([^/\x00-\x20\x7f\s][^\x00-\x20\x7f\s]*)?$"

_SERVICE_NAME = re.compile(SERVICE_NAME_PATTERN)
_INSTANCE_ID = re.compile(INSTANCE_ID_PATTERN)
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"  # no leading zeros
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_DIGITS_AND_DOTS = re.compile(r"[0-9.]+")
_NUMERIC_LABEL = re.compile(r"[0-9]+")
_NO_GO_IN_PATH = re.compile(r"[\x00-\x20\x7f\s]")


def check_service_name(value: str, field: str = "service_name") -> str:
    if not _SERVICE_NAME.fullmatch(value):
        raise InvalidArgument(
            field,
            "must be 1 to 128 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit",
        )
    return value


def check_instance_id(value: str, field: str = "instance_id") -> str:
    if not _INSTANCE_ID.fullmatch(value):
        raise InvalidArgument(
            field,
            "must be 1 to 256 characters of A-Z a-z 0-9 . _ - :, starting with a letter or digit",
        )
    return value


def check_host(value: str) -> str:
    """A DNS name (RFC 1123), an IPv4 address or an IPv6 address without brackets."""
    if not value or len(value) > MAX_HOST:
        raise InvalidArgument("host", f"must be 1 to {MAX_HOST} characters")
    if ":" in value:
        try:
            address = ipaddress.IPv6Address(value)
        except ValueError:
            raise InvalidArgument("host", "is not a valid IPv6 address") from None
        if address.scope_id:
            raise InvalidArgument("host", "must not carry an IPv6 zone")
        return value
    # Regular expressions rather than ipaddress for the common cases: a fifth of the cost.
    if _DIGITS_AND_DOTS.fullmatch(value):
        if not _IPV4.fullmatch(value):
            raise InvalidArgument("host", "is not a valid IPv4 address")
        return value
    if not _DNS_NAME.fullmatch(value):
        raise InvalidArgument("host", "is not a valid DNS name, IPv4 or IPv6 address")
    if _NUMERIC_LABEL.fullmatch(value.rpartition(".")[2]):
        raise InvalidArgument("host", "is not a valid DNS name (numeric top-level label)")
    return value


def check_port(value: int) -> int:
    if isinstance(value, bool) or not 1 <= value <= 65535:
        raise InvalidArgument("port", "must be an integer in 1..65535")
    return value


def check_health_endpoint(value: str) -> str:
    if not value.startswith("/") or value.startswith("//"):
        raise InvalidArgument("health_endpoint", "must start with a single '/'")
    if len(value) > MAX_HEALTH_ENDPOINT:
        raise InvalidArgument(
            "health_endpoint", f"must be at most {MAX_HEALTH_ENDPOINT} characters"
        )
    if _NO_GO_IN_PATH.search(value):
        raise InvalidArgument(
            "health_endpoint", "must not contain whitespace or control characters"
        )
    return value


def check_metadata(value: Mapping[str, str]) -> dict[str, str]:
    if len(value) > MAX_METADATA_ENTRIES:
        raise InvalidArgument("metadata", f"must have at most {MAX_METADATA_ENTRIES} entries")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise InvalidArgument("metadata", "keys and values must be strings")
        if not 1 <= len(key) <= MAX_METADATA_KEY:
            raise InvalidArgument("metadata", f"keys must be 1 to {MAX_METADATA_KEY} characters")
        if len(item) > MAX_METADATA_VALUE:
            raise InvalidArgument(
                "metadata", f"values must be at most {MAX_METADATA_VALUE} characters"
            )
    return dict(value)


def check_load(value: float, field: str = "load_percentage") -> float:
    if isinstance(value, bool) or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise InvalidArgument(field, "must be a finite number in 0..1")
    return float(value)


def registration(
    service_name: str,
    instance_id: str,
    host: str,
    port: int,
    health_endpoint: str | None,
    metadata: Mapping[str, str],
) -> Registration:
    """Check every field of a registration and build it."""
    return Registration(
        service_name=check_service_name(service_name),
        instance_id=check_instance_id(instance_id),
        host=check_host(host),
        port=check_port(port),
        health_endpoint=None if health_endpoint is None else check_health_endpoint(health_endpoint),
        metadata=check_metadata(metadata),
    )


def heartbeat(service_name: str, instance_id: str, load: float | None) -> float | None:
    """The checks of a heartbeat over gRPC (unary or KeepAlive); returns the load."""
    check_service_name(service_name)
    check_instance_id(instance_id)
    return None if load is None else check_load(load)
