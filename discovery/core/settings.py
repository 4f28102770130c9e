"""Settings: one frozen, typed object built from the environment (and CLI flags) at the edge.

Every field has an environment variable named in `ENV_VARS` and a CLI flag derived from the field
name (`rest_port` -> `--rest-port`). A bad value raises `ConfigError` naming the variable; the
entry point turns that into a one-line message and exit status 2.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """A setting has a value that cannot be used; `variable` names it."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable


DEFAULT_PREFIX = "/service-discovery"


@dataclass(frozen=True, slots=True)
class EtcdTarget:
    """The endpoints of one etcd cluster and the key prefix every server key lies under."""

    endpoints: tuple[str, ...]
    prefix: str = DEFAULT_PREFIX

    @classmethod
    def parse(cls, url: str) -> EtcdTarget:
        """`ValueError` naming what is wrong with `url`."""
        rest = url.removeprefix("etcd://")
        hosts, slash, path = rest.partition("/")
        prefix = "/" + path if slash else DEFAULT_PREFIX
        if prefix == "/" or prefix.endswith("/"):
            raise ValueError("the prefix must not be empty or end with '/'")
        endpoints = tuple(hosts.split(","))
        for endpoint in endpoints:
            host, colon, port = endpoint.rpartition(":")
            if not colon or not host or not port.isdigit() or not 0 < int(port) <= 65535:
                raise ValueError(f"expected HOST:PORT, got {endpoint!r}")
        return cls(endpoints, prefix)

    def __str__(self) -> str:
        return f"{','.join(self.endpoints)} {self.prefix}"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the process can be told. Durations are seconds and accept fractions."""

    host: str = "0.0.0.0"
    rest_port: int = 3004
    grpc_port: int = 50051
    log_level: str = "INFO"
    log_format: str = "text"
    secret: str | None = None

    health_check_interval: float = 30.0
    health_check_timeout: float = 5.0
    health_check_failure_threshold: int = 2
    health_check_success_threshold: int = 1
    health_check_max_concurrency: int = 100
    health_check_max_probes_per_second: float = 1000.0

    critical_load_threshold: float = 0.8
    critical_load_hysteresis: float = 0.05
    alert_webhook_url: str | None = None

    registration_ttl: float = 300.0
    heartbeat_interval: float = 60.0

    max_instances: int = 100_000
    max_instances_per_service: int = 10_000

    watch_history_size: int = 10_000
    watch_max_backlog: int = 1_000
    watch_progress_interval: float = 5.0

    shutdown_grace: float = 3.0

    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_client_ca_file: str | None = None
    xds_lb_policy: str = "round_robin"
    xds_dns_refresh: float = 30.0
    #: Where the registry's state is kept: `sqlite:PATH`, `memory`, `etcd://...` (see
    #: `discovery.core.store`).
    store: str = "sqlite:data/registry.db"
    #: Seconds a register or unregister waits for its store write before it is refused.
    store_write_timeout: float = 5.0
    etcd_username: str | None = None
    etcd_password: str | None = None
    etcd_ca_file: str | None = None
    etcd_cert_file: str | None = None
    etcd_key_file: str | None = None
    replica_ttl: float = 5.0
    etcd_start_timeout: float = 20.0

    @property
    def etcd(self) -> EtcdTarget | None:
        """Where the etcd store is, when `store` names one."""
        return EtcdTarget.parse(self.store) if self.store.startswith("etcd://") else None

    # Connection hygiene (both ports): caps, timeouts, keepalive, memory given back.
    max_connections: int = 10_000
    idle_timeout: float = 60.0
    header_timeout: float = 10.0
    grpc_max_connection_idle: float = 300.0
    grpc_max_connection_age: float = 0.0
    grpc_max_connection_age_grace: float = 0.0
    grpc_keepalive_time: float = 60.0
    grpc_keepalive_timeout: float = 20.0
    client_error_log_interval: float = 10.0
    memory_trim_interval: float = 30.0

    @property
    def heartbeat_grace(self) -> float:
        """How long a heartbeat-only instance stays healthy without a heartbeat."""
        return 2 * self.heartbeat_interval

    @property
    def tls(self) -> bool:
        """Whether both ports serve TLS only."""
        return self.tls_cert_file is not None

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> Settings:
        """Build settings from environment variables; `overrides` (CLI flags) win over them."""
        values: dict[str, Any] = {}
        for field_name, (variable, parse) in _SPEC.items():
            raw = env.get(variable)
            if raw is not None and raw.strip() != "":
                values[field_name] = _parse(variable, parse, raw.strip())
        for field_name, value in overrides.items():
            if value is not None:
                variable = _SPEC[field_name][0]
                values[field_name] = _parse(variable, _SPEC[field_name][1], str(value))
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Raise `ConfigError` for values that parse but do not make sense together."""
        for field_name, (variable, _) in _SPEC.items():
            rule = _RULES.get(field_name)
            if rule is not None:
                message = rule(getattr(self, field_name))
                if message:
                    raise ConfigError(variable, message)
        if self.critical_load_hysteresis > self.critical_load_threshold:
            raise ConfigError(
                "CRITICAL_LOAD_HYSTERESIS", "must not be larger than CRITICAL_LOAD_THRESHOLD"
            )
        self._check_tls()

    def _check_tls(self) -> None:
        cert, key, ca = "tls_cert_file", "tls_key_file", "tls_client_ca_file"
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            given, missing = (cert, key) if self.tls_key_file is None else (key, cert)
            raise ConfigError(ENV_VARS[missing], f"must be set together with {ENV_VARS[given]}")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ConfigError(
                ENV_VARS[ca], f"needs {ENV_VARS[cert]} and {ENV_VARS[key]} (TLS) as well"
            )

    def replace(self, **changes: Any) -> Settings:
        """A copy with `changes` applied and checked."""
        settings = dataclasses.replace(self, **changes)
        settings.check()
        return settings


def _parse(variable: str, parse: Callable[[str], Any], raw: str) -> Any:
    try:
        return parse(raw)
    except ValueError as exc:
        raise ConfigError(variable, f"invalid value {raw!r} ({exc})") from None


def _seconds(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


def _integer(raw: str) -> int:
    return int(raw, 10)


def _log_level(raw: str) -> str:
    level = raw.upper()
    if level not in logging.getLevelNamesMapping() or level == "NOTSET":
        raise ValueError("expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level


def _log_format(raw: str) -> str:
    log_format = raw.lower()
    if log_format not in ("text", "json"):
        raise ValueError("expected text or json")
    return log_format


def _optional_text(raw: str) -> str | None:
    return raw or None


def _webhook_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("expected an http:// or https:// URL")
    return raw


#: The load-balancing policies an xDS Cluster may name (XDS_LB_POLICY).
LB_POLICIES = ("round_robin", "ring_hash", "least_request", "random")


def _lb_policy(raw: str) -> str:
    policy = raw.lower()
    if policy not in LB_POLICIES:
        raise ValueError("expected one of " + ", ".join(LB_POLICIES))
    return policy


def _store(raw: str) -> str:
    if raw == "memory":
        return raw
    if raw.startswith("sqlite:"):
        if not raw.removeprefix("sqlite:").strip():
            raise ValueError("sqlite: needs a file path, as in sqlite:data/registry.db")
        return raw
    if raw.startswith("etcd://"):
        EtcdTarget.parse(raw)
        return raw
    raise ValueError("expected sqlite:PATH, memory or etcd://HOST:PORT[,HOST:PORT...][/PREFIX]")


def _store_form(value: str) -> str | None:
    try:
        _store(value)
    except ValueError as exc:
        return str(exc)
    return None


def _readable_file(raw: str) -> str:
    try:
        with open(raw, "rb"):
            return raw
    except OSError as exc:
        raise ValueError(f"cannot read the file: {exc.strerror}") from None


def _replica_ttl(value: float) -> str | None:
    # etcd grants no lease shorter than about 2 s.
    return None if value >= 2 else "must be at least 2"


def _port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "must be a port number in 0..65535"


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _at_least_one(value: int) -> str | None:
    return None if value >= 1 else "must be at least 1"


def _fraction(value: float) -> str | None:
    return None if 0 <= value <= 1 else "must be between 0 and 1"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must not be negative"


def _progress(value: float) -> str | None:
    return None if 0 < value <= 10 else "must be greater than 0 and at most 10"


_SPEC: dict[str, tuple[str, Callable[[str], Any]]] = {
    "host": ("SERVICE_DISCOVERY_HOST", str),
    "rest_port": ("SERVICE_DISCOVERY_PORT", _integer),
    "grpc_port": ("SERVICE_DISCOVERY_GRPC_PORT", _integer),
    "log_level": ("LOG_LEVEL", _log_level),
    "log_format": ("LOG_FORMAT", _log_format),
    "secret": ("SERVICE_DISCOVERY_SECRET", _optional_text),
    "health_check_interval": ("HEALTH_CHECK_INTERVAL_SECONDS", _seconds),
    "health_check_timeout": ("HEALTH_CHECK_TIMEOUT_SECONDS", _seconds),
    "health_check_failure_threshold": ("HEALTH_CHECK_FAILURE_THRESHOLD", _integer),
    "health_check_success_threshold": ("HEALTH_CHECK_SUCCESS_THRESHOLD", _integer),
    "health_check_max_concurrency": ("HEALTH_CHECK_MAX_CONCURRENCY", _integer),
    "health_check_max_probes_per_second": ("HEALTH_CHECK_MAX_PROBES_PER_SECOND", _seconds),
    "critical_load_threshold": ("CRITICAL_LOAD_THRESHOLD", _seconds),
    "critical_load_hysteresis": ("CRITICAL_LOAD_HYSTERESIS", _seconds),
    "alert_webhook_url": ("ALERT_WEBHOOK_URL", _webhook_url),
    "registration_ttl": ("SERVICE_REGISTRATION_TTL_SECONDS", _seconds),
    "heartbeat_interval": ("SERVICE_HEARTBEAT_INTERVAL_SECONDS", _seconds),
    "max_instances": ("MAX_INSTANCES", _integer),
    "max_instances_per_service": ("MAX_INSTANCES_PER_SERVICE", _integer),
    "watch_history_size": ("WATCH_HISTORY_SIZE", _integer),
    "watch_max_backlog": ("WATCH_MAX_BACKLOG", _integer),
    "watch_progress_interval": ("WATCH_PROGRESS_INTERVAL_SECONDS", _seconds),
    "shutdown_grace": ("SHUTDOWN_GRACE_SECONDS", _seconds),
    "tls_cert_file": ("SERVICE_DISCOVERY_TLS_CERT_FILE", _optional_text),
    "tls_key_file": ("SERVICE_DISCOVERY_TLS_KEY_FILE", _optional_text),
    "tls_client_ca_file": ("SERVICE_DISCOVERY_TLS_CLIENT_CA_FILE", _optional_text),
    "xds_lb_policy": ("XDS_LB_POLICY", _lb_policy),
    "xds_dns_refresh": ("XDS_DNS_REFRESH_SECONDS", _seconds),
    "store": ("SERVICE_DISCOVERY_STORE", _store),
    "store_write_timeout": ("SERVICE_DISCOVERY_STORE_WRITE_TIMEOUT_SECONDS", _seconds),
    "etcd_username": ("SERVICE_DISCOVERY_ETCD_USERNAME", _optional_text),
    "etcd_password": ("SERVICE_DISCOVERY_ETCD_PASSWORD", _optional_text),
    "etcd_ca_file": ("SERVICE_DISCOVERY_ETCD_CA_FILE", _readable_file),
    "etcd_cert_file": ("SERVICE_DISCOVERY_ETCD_CERT_FILE", _readable_file),
    "etcd_key_file": ("SERVICE_DISCOVERY_ETCD_KEY_FILE", _readable_file),
    "replica_ttl": ("SERVICE_DISCOVERY_REPLICA_TTL_SECONDS", _seconds),
    "etcd_start_timeout": ("SERVICE_DISCOVERY_ETCD_START_TIMEOUT_SECONDS", _seconds),
    "max_connections": ("MAX_CONNECTIONS", _integer),
    "idle_timeout": ("IDLE_TIMEOUT_SECONDS", _seconds),
    "header_timeout": ("HEADER_TIMEOUT_SECONDS", _seconds),
    "grpc_max_connection_idle": ("GRPC_MAX_CONNECTION_IDLE_SECONDS", _seconds),
    "grpc_max_connection_age": ("GRPC_MAX_CONNECTION_AGE_SECONDS", _seconds),
    "grpc_max_connection_age_grace": ("GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS", _seconds),
    "grpc_keepalive_time": ("GRPC_KEEPALIVE_TIME_SECONDS", _seconds),
    "grpc_keepalive_timeout": ("GRPC_KEEPALIVE_TIMEOUT_SECONDS", _seconds),
    "client_error_log_interval": ("CLIENT_ERROR_LOG_INTERVAL_SECONDS", _seconds),
    "memory_trim_interval": ("MEMORY_TRIM_INTERVAL_SECONDS", _seconds),
}

_RULES: dict[str, Callable[[Any], str | None]] = {
    "store": _store_form,
    "store_write_timeout": _positive,
    "rest_port": _port,
    "grpc_port": _port,
    "health_check_interval": _positive,
    "health_check_timeout": _positive,
    "health_check_failure_threshold": _at_least_one,
    "health_check_success_threshold": _at_least_one,
    "health_check_max_concurrency": _at_least_one,
    "health_check_max_probes_per_second": _positive,
    "critical_load_threshold": _fraction,
    "critical_load_hysteresis": _fraction,
    "registration_ttl": _positive,
    "heartbeat_interval": _positive,
    "max_instances": _at_least_one,
    "max_instances_per_service": _at_least_one,
    "watch_history_size": _at_least_one,
    "watch_max_backlog": _at_least_one,
    "watch_progress_interval": _progress,
    "shutdown_grace": _non_negative,
    "xds_dns_refresh": _positive,
    "replica_ttl": _replica_ttl,
    "etcd_start_timeout": _positive,
    "max_connections": _at_least_one,
    "idle_timeout": _positive,
    "header_timeout": _positive,
    "grpc_max_connection_idle": _non_negative,
    "grpc_max_connection_age": _non_negative,
    "grpc_max_connection_age_grace": _non_negative,
    "grpc_keepalive_time": _positive,
    "grpc_keepalive_timeout": _positive,
    "client_error_log_interval": _positive,
    "memory_trim_interval": _non_negative,
}

#: Field name -> environment variable, for the README and the CLI help.
ENV_VARS: dict[str, str] = {name: variable for name, (variable, _) in _SPEC.items()}
