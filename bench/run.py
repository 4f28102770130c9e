"""Run every bench in this folder, one after the other (`make bench`, `make bench-smoke`).

A bench is a module here with a `cli(argv)` entry point; `--smoke` is passed on to each.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Sequence
from pathlib import Path


def benches() -> list[str]:
    """The bench modules (those with a `cli(argv)`), in name order."""
    here = Path(__file__).parent
    names = (info.name for info in pkgutil.iter_modules([str(here)]))
    candidates = sorted(n for n in names if not n.startswith("_") and n != "run")
    return [n for n in candidates if hasattr(importlib.import_module(f"bench.{n}"), "cli")]


def main(argv: Sequence[str]) -> None:
    for name in benches():
        print(f"== bench.{name}", flush=True)
        importlib.import_module(f"bench.{name}").cli(list(argv))
        print(flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
