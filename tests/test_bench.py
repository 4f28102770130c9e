"""The benches run end to end (`--smoke`: tiny sizes), so they cannot rot unnoticed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.run import benches

#: What each bench's tiny run must print (its figures against their baseline or target).
EXPECTED = {
    "probe_fleet": ["probes/s:", "gap between probes", "server CPU:", "p99", "healthy at the end"],
}


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
    for figure in EXPECTED.get(bench, ["ratio"]):
        assert figure in result.stdout, result.stdout
