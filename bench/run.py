"""Every bench in turn, for `make bench`; `--smoke` (for `make bench-smoke`) runs each tiny."""

from __future__ import annotations

import sys

from bench import probe_fleet


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    probe_fleet.main(["--smoke"] if "--smoke" in args else [])


if __name__ == "__main__":
    main()
