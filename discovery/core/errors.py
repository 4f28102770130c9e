"""The one error tree of the core. Each adapter maps it once (HTTP statuses, gRPC codes).

DiscoveryError
├── AuthError                    401 / UNAUTHENTICATED
│   ├── MissingCredentials
│   ├── MalformedCredentials
│   └── InvalidSecret
├── InvalidArgument              422 / INVALID_ARGUMENT   (names the field)
├── NotFound                     404 / NOT_FOUND
│   ├── InstanceNotFound
│   └── ServiceNotFound
├── LimitExceeded                429 / RESOURCE_EXHAUSTED
├── ShuttingDown                 503 / UNAVAILABLE
└── StoreUnavailable             503 / UNAVAILABLE        (a write could not be made durable)
"""

from __future__ import annotations


class DiscoveryError(Exception):
    """Base of every error the core raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class AuthError(DiscoveryError):
    """A write came without valid credentials."""


class MissingCredentials(AuthError):
    def __init__(self) -> None:
        super().__init__("Missing Authorization header")


class MalformedCredentials(AuthError):
    def __init__(self) -> None:
        super().__init__("Invalid Authorization header format")


class InvalidSecret(AuthError):
    def __init__(self) -> None:
        super().__init__("Invalid service discovery secret")


class InvalidArgument(DiscoveryError):
    """A request field has a value the contract does not allow."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class NotFound(DiscoveryError):
    """The named thing is not registered."""


class InstanceNotFound(NotFound):
    def __init__(self, service_name: str, instance_id: str) -> None:
        super().__init__(f"Instance {service_name}:{instance_id} not found")
        self.service_name = service_name
        self.instance_id = instance_id


class ServiceNotFound(NotFound):
    def __init__(self, service_name: str) -> None:
        super().__init__(f"Service '{service_name}' not found")
        self.service_name = service_name


class LimitExceeded(DiscoveryError):
    """A registration would pass a configured limit; nothing was changed."""


class ShuttingDown(DiscoveryError):
    """The server is stopping and takes no new streams."""

    def __init__(self) -> None:
        super().__init__("Server is shutting down")


class StoreUnavailable(DiscoveryError):
    """A write could not be made durable (disk full, store unreachable); it was not applied."""
