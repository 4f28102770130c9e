"""The benchmark scripts still run (tiny sizes), so a broken bench shows up here."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.common import ROOT


@pytest.mark.timeout(180)
@pytest.mark.parametrize("module", ["bench.register_rate"])
def test_bench_smoke(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", module, "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| figure |" in result.stdout
