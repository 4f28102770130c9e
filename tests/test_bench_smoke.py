"""The probe bench runs end to end at tiny sizes and reports its figures."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_probe_fleet_smoke() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.probe_fleet", "--smoke"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    for figure in ("probes/s:", "gap between probes", "server CPU:", "p99", "machine:"):
        assert figure in out, out
    assert "healthy at the end: 200/200; never probed: 0" in out, out
