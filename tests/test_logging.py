"""`LOG_FORMAT`: JSON lines for log shippers, text by default, exit 2
otherwise. Through the console script, plus the formatter itself for tracebacks and fields.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime
from typing import Any

import httpx

from discovery.logs import JsonFormatter
from discovery.testing import ServerProcess
from tests.conftest import registration


def _parsed(line: str) -> dict[str, Any]:
    entry: dict[str, Any] = json.loads(line)
    assert {"time", "level", "logger", "message"} <= entry.keys(), line
    stamp = datetime.fromisoformat(entry["time"])
    assert stamp.utcoffset() is not None, line
    return entry


async def test_json_logs_are_one_object_per_line() -> None:
    env = {"LOG_FORMAT": "json", "SERVICE_DISCOVERY_STORE": "memory", "LOG_LEVEL": "info"}
    async with await ServerProcess.start(env=env) as server:
        async with httpx.AsyncClient(base_url=server.rest_url, timeout=10) as rest:
            body = registration(metadata={"note": 'quotes " and\nnewlines'})
            assert (await rest.post("/v1/discovery/register", json=body)).status_code == 200
        await server.wait_for_line("Registered game:game-1")
        assert await server.stop() == 0
    entries = [_parsed(line) for line in server.lines]
    messages = [entry["message"] for entry in entries]
    assert any(m.startswith("REST listening on 127.0.0.1:") for m in messages)
    assert any(m.startswith("gRPC listening on 127.0.0.1:") for m in messages)
    warning = next(e for e in entries if "SERVICE_DISCOVERY_SECRET is not set" in e["message"])
    assert warning["level"] == "WARNING"
    assert warning["logger"] == "discovery"
    assert "Stopped" in messages


async def test_text_stays_the_default() -> None:
    async with await ServerProcess.start(env={"SERVICE_DISCOVERY_STORE": "memory"}) as server:
        assert await server.stop() == 0
    listening = next(line for line in server.lines if "REST listening on" in line)
    assert not listening.lstrip().startswith("{")
    assert " INFO discovery.listening: REST listening on " in listening


async def test_another_format_exits_2_naming_the_variable() -> None:
    process = await ServerProcess.start(env={"LOG_FORMAT": "xml"}, wait=False)
    async with process:
        assert await process.wait() == 2
    assert "LOG_FORMAT" in process.output
    assert len(process.output.strip().splitlines()) == 1


async def test_a_bad_setting_under_json_is_reported_as_json() -> None:
    env = {"LOG_FORMAT": "JSON", "HEALTH_CHECK_INTERVAL_SECONDS": "abc"}
    process = await ServerProcess.start(env=env, wait=False)
    async with process:
        assert await process.wait() == 2
    (line,) = process.output.strip().splitlines()
    entry = _parsed(line)
    assert entry["level"] == "ERROR"
    assert "HEALTH_CHECK_INTERVAL_SECONDS" in entry["message"]


def test_tracebacks_and_extra_fields_go_into_the_object() -> None:
    formatter = JsonFormatter()
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("discovery.test").makeRecord(
            "discovery.test",
            logging.ERROR,
            __file__,
            1,
            "failed for %s",
            ("game-1",),
            sys.exc_info(),
            extra={"service": "game"},
        )
    line = formatter.format(record)
    assert "\n" not in line
    entry = _parsed(line)
    assert entry["message"] == "failed for game-1"
    assert entry["level"] == "ERROR"
    assert entry["logger"] == "discovery.test"
    assert entry["service"] == "game"
    assert entry["exc_info"].startswith("Traceback (most recent call last):")
    assert "ValueError: boom" in entry["exc_info"]
