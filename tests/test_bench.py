"""The benches run end to end (`--smoke`: tiny sizes), so they cannot rot unnoticed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.run import benches


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("bench", benches())
def test_bench_smoke(bench: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", f"bench.{bench}", "--smoke"],
        capture_output=True,
        text=True,
        timeout=170,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ratio" in result.stdout
