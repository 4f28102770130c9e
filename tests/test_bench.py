"""The bench harness: its pieces, and the whole of it at smoke size, so it cannot rot unnoticed."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from bench.results import Row, Sample, Target, percentile
from bench.run import MODULES
from bench.tools import parse, script

WRK_OUTPUT = """Running 1s test @ http://127.0.0.1:1/v1/discovery/heartbeat
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.51ms  204.19us   3.16ms   80.26%
    Req/Sec     5.36k   209.22     5.66k    70.00%
  5328 requests in 1.00s, 1.01MB read
  Non-2xx or 3xx responses: 3
Requests/sec:   5326.41
Transfer/sec:      1.01MB
checked good 5325 bad 3
"""


def test_wrk_output_is_parsed_with_its_checks() -> None:
    result = parse(WRK_OUTPUT)
    assert (result.rate, result.requests, result.good, result.bad) == (5326.41, 5328, 5325, 3)
    with pytest.raises(RuntimeError, match="3 wrong or lost"):
        result.checked("heartbeat")


def test_wrk_non_2xx_count_as_bad_even_when_the_script_missed_them() -> None:
    output = WRK_OUTPUT.replace("checked good 5325 bad 3", "checked good 5328 bad 0")
    assert parse(output).bad == 3


def test_wrk_script_prints_the_counts_parse_reads() -> None:
    lua = script(['{"a":1}'], {}, '"ok":true')
    assert 'io.write(string.format("checked good %d bad %d\\n", g, b))' in lua


def test_wrk_socket_errors_count_as_bad() -> None:
    output = (
        WRK_OUTPUT.replace("  Non-2xx or 3xx responses: 3\n", "").replace("bad 3", "bad 0")
        + "  Socket errors: connect 0, read 2, write 0, timeout 1\n"
    )
    assert parse(output).bad == 3


def test_wrk_script_rotates_bodies_and_checks_every_answer() -> None:
    lua = script(['{"a":1}', '{"a":2}'], {"Authorization": "Bearer x"}, '"ok":true', times=2)
    assert 'wrk.method = "POST"' in lua
    assert '[==[{"a":2}]==]' in lua
    assert 'wrk.headers["Authorization"] = "Bearer x"' in lua
    assert "function response(status, headers, body)" in lua
    assert "local times = 2" in lua


def test_targets_and_ratios() -> None:
    row = Row("k", "f", Target("ratio_min", 0.9), Sample([90, 100, 95], "req/s"))
    row.baseline = Sample([100, 100, 100], "req/s")
    assert row.ratio == pytest.approx(0.95)
    assert row.met is True
    assert Target("ratio_max", 1.2).met(0, 1.3) is False
    assert Target("max", 30, "KB").met(29.9, None) is True
    assert str(Sample([1.0, 3.0, 2.0], "s")) == "2.00 s (1.00-3.00)"
    record = Row("r", "f", Target("none", 0), Sample([5.0], "req/s"), Sample([10.0], "req/s"))
    assert (record.met, record.ratio, str(record.target)) == (None, 0.5, "-")


def test_percentile_is_a_measured_value() -> None:
    values = [float(n) for n in range(1, 21)]
    assert percentile(values, 99) == 20.0
    assert percentile(values, 50) == 10.0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_harness_at_smoke_size(tmp_path: Path) -> None:
    """Every figure of the targets table is measured (or skipped, saying why), none fails."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=280,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    document = json.loads((tmp_path / "smoke.json").read_text())
    rows = {row["key"]: row for row in document["figures"]}
    expected = [key for name in MODULES for key in importlib.import_module(f"bench.{name}").FIGURES]
    assert list(rows) == expected
    for key, row in rows.items():
        if row["status"] == "skipped":
            warnings.warn(f"bench figure {key} skipped: {row['reason']}", stacklevel=1)
            continue
        assert row["status"] == "measured", row
        assert row["ours"]["values"], row
        assert row["met"] in ((None,) if row["target"] == "-" else (True, False)), row
    assert (tmp_path / "smoke.md").read_text().count("\n| ") == len(expected) + 1
    assert document["machine"]["cores"]
