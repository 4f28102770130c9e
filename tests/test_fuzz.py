"""Property-based fuzzing of the REST API from its own OpenAPI document (schemathesis).

The server runs as a real process (`service-discovery` on free ports) and the schemathesis CLI
drives it with every check it has: no 5xx, statuses, bodies and headers as documented, valid data
accepted and invalid data refused, with and without credentials.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from discovery.testing import SyncServerProcess
from tests.conftest import SECRET

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def rest_url() -> Iterator[str]:
    env = {
        "SERVICE_DISCOVERY_SECRET": SECRET,
        "SERVICE_DISCOVERY_STORE": "memory",
        "HEALTH_CHECK_TIMEOUT_SECONDS": "0.2",
        "MAX_INSTANCES_PER_SERVICE": "50",
    }
    with SyncServerProcess(env=env) as process:
        process.wait_listening()
        yield process.rest_url
        assert process.stop() == 0, process.output


@pytest.mark.timeout(300)
@pytest.mark.parametrize("credentials", [True, False], ids=["with-secret", "without-secret"])
def test_schemathesis_finds_nothing(rest_url: str, credentials: bool, tmp_path: Path) -> None:
    command = [
        str(BIN / "schemathesis"),
        "run",
        f"{rest_url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        "80",
        "--workers",
        "1",
        "--seed",
        "20261127",
    ]
    if credentials:
        command += ["--header", f"Authorization: Bearer {SECRET}"]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "", "NO_COLOR": "1"},
        cwd=tmp_path,  # its caches go there, not into the checkout
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "generated" in result.stdout
