"""The benches run end to end (`--smoke`: tiny sizes), so they cannot rot unnoticed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.parametrize("bench", ["watch_fanout", "keepalive"])
def test_bench_smoke(bench: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", f"bench.{bench}", "--smoke"],
        capture_output=True,
        text=True,
        timeout=100,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ratio" in result.stdout
