"""Measure every figure of the targets table and print one summary (`make bench`).

    python -m bench.run                 # full sizes, writes bench/results/latest.{json,md}
    python -m bench.run --smoke         # tiny sizes, writes bench/results/smoke.{json,md}
    python -m bench.run --only rest_api,startup

Each figure module (`FIGURES`, `measure(smoke)`) is run in turn; one that fails gives error rows
for its figures and the others still run; a tool that cannot be installed gives skipped rows.
The exit status is 1 when any figure could not be measured (an error), else 0: a missed target
is a result, not a failure of the harness.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from bench.common import pin_self
from bench.results import RESULTS, Row, Target, failed, machine, markdown, skipped, write
from bench.tools import ToolMissing

#: In the order they run (and appear in the table).
MODULES = [
    "rest_api",
    "grpc_heartbeat",
    "previous",
    "watch_fanout",
    "xds_fanout",
    "watch_writes",
    "conn_flood",
    "memory",
    "metrics_scrape",
    "register_burst",
    "probe_fleet",
    "startup",
    "store",
    "replicas",
]


def figure(module: ModuleType, key: str) -> tuple[str, Target]:
    """The title and target of one of the module's figures."""
    title, target = module.FIGURES[key]
    return title, target


def run_module(name: str, smoke: bool) -> list[Row]:
    """The module's rows, or one error (or skipped) row per figure when it cannot finish."""
    module = importlib.import_module(f"bench.{name}")
    started = time.monotonic()
    print(f"== bench.{name}", file=sys.stderr, flush=True)
    try:
        rows: list[Row] = module.measure(smoke)
    except ToolMissing as exc:
        rows = [skipped(key, *figure(module, key), str(exc)) for key in module.FIGURES]
    except Exception as exc:  # one module's failure must not hide the others' figures
        traceback.print_exc()
        reason = f"{type(exc).__name__}: {exc}"
        rows = [failed(key, *figure(module, key), reason) for key in module.FIGURES]
    missing = set(module.FIGURES) - {row.key for row in rows}
    rows += [failed(key, *figure(module, key), "not measured") for key in sorted(missing)]
    print(f"   {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check it works")
    parser.add_argument("--only", help="comma-separated module names (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else MODULES
    unknown = set(names) - set(MODULES)
    if unknown:
        parser.error(f"unknown modules: {', '.join(sorted(unknown))}")
    pin_self()
    mode = "smoke" if args.smoke else "full"
    load_before = [round(x, 2) for x in os.getloadavg()]
    started = time.monotonic()
    rows = [row for name in names for row in run_module(name, args.smoke)]
    about = machine()
    about.update(load_average_start=load_before, seconds=round(time.monotonic() - started))
    print(markdown(rows, about, mode), flush=True)
    path = write(rows, about, mode, args.out)
    print(f"written to {path} and {path.with_suffix('.json')}", flush=True)
    for row in rows:
        if row.status != "measured":
            print(f"{row.status.upper()}: {row.figure}: {row.reason}", file=sys.stderr)
    return 1 if any(row.status == "error" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
