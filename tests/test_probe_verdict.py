"""The verdict on one probe answer and the load parsed from it: a table of cases."""

from __future__ import annotations

import json
from typing import Any

import pytest

from discovery.core.health.probe import MAX_BODY, ProbeTarget, parse_load, verdict


def body(document: Any) -> bytes:
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("status_code", "payload", "passed"),
    [
        (200, b"", True),
        (204, b"", True),
        (299, b"", True),
        (200, b"OK", True),
        (200, b"healthy\n", True),
        (200, b"down", True),  # plain text is not JSON: only the status code counts
        (200, body({"status": "UP"}), True),
        (200, body({"status": "up", "components": {"db": {"status": "UP"}}}), True),
        (200, body({"status": "ok"}), True),
        (200, body({"status": "healthy"}), True),
        (200, body({"status": "degraded"}), True),
        (200, body({"status": 0}), True),
        (200, body({"healthy": True}), True),
        (200, body(["down"]), True),
        (200, body("down"), True),
        (200, b"{not json", True),
        (200, b'{"status": "DOWN"', True),  # a cut body is not JSON
        (200, body({"status": "unhealthy"}), False),
        (200, body({"status": "DOWN"}), False),
        (200, body({"status": "Down"}), False),
        (200, body({"status": "fail"}), False),
        (200, body({"status": "FAILED"}), False),
        (200, body({"status": "critical"}), False),
        (200, body({"status": "Error"}), False),
        (200, body({"status": " down "}), False),
        (200, b'\xef\xbb\xbf{"status": "down"}', False),
        (200, b'  \n{"status": "down"}', False),
        (201, body({"status": "down", "load_percentage": 0.2}), False),
        (199, b"", False),
        (300, b"", False),
        (301, body({"status": "UP"}), False),
        (302, b"", False),
        (304, b"", False),
        (400, b"", False),
        (404, body({"status": "UP"}), False),
        (429, b"", False),
        (500, b"", False),
        (503, body({"status": "UP"}), False),
    ],
)
def test_verdict(status_code: int, payload: bytes, passed: bool) -> None:
    result = verdict(status_code, payload)
    assert result.passed is passed
    assert str(status_code) in result.reason
    if not passed:
        assert result.load is None


@pytest.mark.parametrize(
    ("value", "load"),
    [
        (0, 0.0),
        (1, 1.0),
        (0.0, 0.0),
        (0.42, 0.42),
        (1.0, 1.0),
        (-0.0, 0.0),
    ],
)
def test_valid_load(value: Any, load: float) -> None:
    assert parse_load(value) == (load, None)
    result = verdict(200, body({"status": "UP", "load_percentage": value}))
    assert result.passed
    assert result.load == load
    assert result.bad_load is None


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        None,
        "0.5",
        "",
        [0.5],
        {"value": 0.5},
        -0.01,
        1.0001,
        2,
        -1,
        10**400,
        float("nan"),
        float("inf"),
        float("-inf"),
    ],
)
def test_invalid_load(value: Any) -> None:
    load, why = parse_load(value)
    assert load is None
    assert why
    # json.dumps writes NaN and Infinity, which Python's json reads back as floats.
    result = verdict(200, body({"status": "UP", "load_percentage": value}))
    assert result.passed
    assert result.load is None
    assert result.bad_load


def test_no_load_is_not_a_bad_load() -> None:
    result = verdict(200, body({"status": "UP"}))
    assert (result.load, result.bad_load) == (None, None)


def test_load_of_a_failing_answer_is_ignored() -> None:
    for result in (
        verdict(503, body({"load_percentage": 0.9})),
        verdict(200, body({"status": "down", "load_percentage": 0.9})),
    ):
        assert not result.passed
        assert (result.load, result.bad_load) == (None, None)


def test_a_body_cut_at_the_cap_still_passes() -> None:
    payload = body({"status": "down", "pad": "x" * MAX_BODY})[:MAX_BODY]
    assert verdict(200, payload).passed


@pytest.mark.parametrize(
    ("target", "url"),
    [
        (ProbeTarget("127.0.0.1", 8080, "/health"), "http://127.0.0.1:8080/health"),
        (ProbeTarget("game.internal", 80, "/"), "http://game.internal:80/"),
        (ProbeTarget("::1", 9000, "/health"), "http://[::1]:9000/health"),
        (ProbeTarget("fd00::5", 1, "/h?verbose=1"), "http://[fd00::5]:1/h?verbose=1"),
    ],
)
def test_url(target: ProbeTarget, url: str) -> None:
    assert target.url == url
