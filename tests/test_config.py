"""Settings: environment variables, CLI flags, defaults and the errors that stop start-up."""

from __future__ import annotations

import pytest

from discovery.core.settings import ENV_VARS, ConfigError, Settings
from discovery.main import parse_args


def test_defaults_match_the_contract() -> None:
    settings = Settings.from_env({})
    assert (settings.rest_port, settings.grpc_port, settings.host) == (3004, 50051, "0.0.0.0")
    assert settings.health_check_interval == 30
    assert settings.health_check_timeout == 5
    assert settings.critical_load_threshold == 0.8
    assert settings.critical_load_hysteresis == 0.05
    assert settings.registration_ttl == 300
    assert settings.heartbeat_interval == 60
    assert settings.log_level == "INFO"
    assert settings.secret is None
    assert settings.health_check_failure_threshold == 2
    assert settings.health_check_success_threshold == 1
    assert settings.health_check_max_concurrency == 100
    assert settings.health_check_max_probes_per_second == 1000
    assert (settings.max_instances, settings.max_instances_per_service) == (100_000, 10_000)
    assert settings.watch_history_size == 10_000


def test_every_variable_of_the_contract_is_read() -> None:
    env = {
        "SERVICE_DISCOVERY_PORT": "1",
        "SERVICE_DISCOVERY_GRPC_PORT": "2",
        "SERVICE_DISCOVERY_HOST": "127.0.0.1",
        "HEALTH_CHECK_INTERVAL_SECONDS": "0.2",
        "HEALTH_CHECK_TIMEOUT_SECONDS": "0.1",
        "CRITICAL_LOAD_THRESHOLD": "0.5",
        "SERVICE_REGISTRATION_TTL_SECONDS": "1.5",
        "SERVICE_HEARTBEAT_INTERVAL_SECONDS": "0.25",
        "LOG_LEVEL": "debug",
        "SERVICE_DISCOVERY_SECRET": "s3",
    }
    settings = Settings.from_env(env)
    assert (settings.rest_port, settings.grpc_port, settings.host) == (1, 2, "127.0.0.1")
    assert settings.health_check_interval == 0.2
    assert settings.health_check_timeout == 0.1
    assert settings.critical_load_threshold == 0.5
    assert settings.registration_ttl == 1.5
    assert settings.heartbeat_interval == 0.25
    assert settings.heartbeat_grace == 0.5
    assert settings.log_level == "DEBUG"
    assert settings.secret == "s3"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("HEALTH_CHECK_INTERVAL_SECONDS", "abc"),
        ("HEALTH_CHECK_INTERVAL_SECONDS", "0"),
        ("HEALTH_CHECK_INTERVAL_SECONDS", "nan"),
        ("HEALTH_CHECK_TIMEOUT_SECONDS", "-1"),
        ("CRITICAL_LOAD_THRESHOLD", "1.5"),
        ("CRITICAL_LOAD_THRESHOLD", "-0.1"),
        ("SERVICE_DISCOVERY_PORT", "65536"),
        ("SERVICE_DISCOVERY_PORT", "-1"),
        ("SERVICE_DISCOVERY_PORT", "80.5"),
        ("SERVICE_DISCOVERY_GRPC_PORT", "http"),
        ("SERVICE_REGISTRATION_TTL_SECONDS", "0"),
        ("SERVICE_HEARTBEAT_INTERVAL_SECONDS", "inf"),
        ("LOG_LEVEL", "chatty"),
        ("MAX_INSTANCES", "0"),
        ("HEALTH_CHECK_MAX_CONCURRENCY", "0"),
        ("HEALTH_CHECK_FAILURE_THRESHOLD", "0"),
        ("WATCH_PROGRESS_INTERVAL_SECONDS", "11"),
        ("ALERT_WEBHOOK_URL", "ftp://example.com"),
    ],
)
def test_a_bad_value_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: value})
    assert caught.value.variable == variable
    assert str(caught.value).startswith(variable)


def test_port_zero_means_any_free_port() -> None:
    settings = Settings.from_env(
        {"SERVICE_DISCOVERY_PORT": "0", "SERVICE_DISCOVERY_GRPC_PORT": "0"}
    )
    assert (settings.rest_port, settings.grpc_port) == (0, 0)


def test_empty_variables_fall_back_to_defaults() -> None:
    assert Settings.from_env({"SERVICE_DISCOVERY_SECRET": "", "SERVICE_DISCOVERY_PORT": " "}) == (
        Settings()
    )


def test_cli_flags_map_one_to_one_and_win_over_the_environment() -> None:
    settings = parse_args(
        ["--rest-port", "0", "--health-check-interval", "0.5", "--log-level", "warning"],
        {"SERVICE_DISCOVERY_PORT": "9000", "HEALTH_CHECK_INTERVAL_SECONDS": "3"},
    )
    assert settings.rest_port == 0
    assert settings.health_check_interval == 0.5
    assert settings.log_level == "WARNING"


def test_a_bad_flag_is_reported_with_its_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_args(["--critical-load-threshold", "2"], {})
    assert caught.value.variable == "CRITICAL_LOAD_THRESHOLD"


def test_the_secret_has_no_flag() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--secret", "x"], {})
    assert ENV_VARS["secret"] == "SERVICE_DISCOVERY_SECRET"


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(AttributeError):
        settings.rest_port = 1  # type: ignore[misc]
