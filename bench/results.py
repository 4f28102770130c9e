"""Figures, targets and the summary: one table, printed and written as JSON and Markdown.

A `Sample` is the repetitions of one measurement (median, min, max). A `Row` is one line of the
targets table: our sample, the baseline's (when the target is a ratio), the target, whether it
is met, and notes (CPU shares, the load generator being the bottleneck, what was checked).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from bench.common import ROOT, Usage, pin_self

RESULTS = ROOT / "bench" / "results"


@dataclass
class Sample:
    """Repetitions of one measurement, in `unit`."""

    values: list[float]
    unit: str

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def __str__(self) -> str:
        low, high = min(self.values), max(self.values)
        if len(self.values) == 1:
            return f"{_number(self.median)} {self.unit}"
        return f"{_number(self.median)} {self.unit} ({_number(low)}-{_number(high)})"


def _number(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank: a value that was actually measured."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100)
    return ordered[int(rank) - 1]


Kind = Literal["ratio_min", "ratio_max", "min", "max", "none"]


@dataclass(frozen=True)
class Target:
    """`ratio_min`: ours / baseline >= value; `ratio_max`: <= value; `min` / `max`: ours alone;
    `none`: a figure reported for the record, with no target to meet."""

    kind: Kind
    value: float
    unit: str = ""

    def __str__(self) -> str:
        if self.kind == "none":
            return "-"
        sign = ">=" if self.kind in ("ratio_min", "min") else "<="
        if self.kind.startswith("ratio"):
            return f"{sign} {self.value:g}x"
        return f"{sign} {self.value:,g} {self.unit}".rstrip()

    def met(self, ours: float, ratio: float | None) -> bool:
        value = ratio if self.kind.startswith("ratio") else ours
        if value is None:
            return False
        return value >= self.value if self.kind in ("ratio_min", "min") else value <= self.value


Status = Literal["measured", "skipped", "error"]


@dataclass
class Row:
    """One figure of the targets table."""

    key: str
    figure: str
    target: Target
    ours: Sample | None = None
    baseline: Sample | None = None
    baseline_name: str = ""
    status: Status = "measured"
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    load_bound: bool = False  # the load generator, not the server, set the pace somewhere

    @property
    def ratio(self) -> float | None:
        if self.ours is None or self.baseline is None or self.baseline.median == 0:
            return None
        return self.ours.median / self.baseline.median

    @property
    def paired(self) -> list[float]:
        """Ratio of each repetition (ours and the baseline ran in turn): how steady it was."""
        if self.ours is None or self.baseline is None:
            return []
        if len(self.ours.values) != len(self.baseline.values) or len(self.ours.values) < 2:
            return []
        pairs = zip(self.ours.values, self.baseline.values, strict=True)
        return [ours / base for ours, base in pairs if base]

    @property
    def met(self) -> bool | None:
        if self.status != "measured" or self.ours is None or self.target.kind == "none":
            return None
        return self.target.met(self.ours.median, self.ratio)

    def note_usage(self, who: str, runs: Sequence[Usage]) -> None:
        """Record the median CPU shares of `runs`, and say when the load generator was the
        bottleneck."""
        if not runs:
            return
        server = statistics.median(u.server for u in runs)
        client = statistics.median(u.client for u in runs)
        note = f"{who}: server core {server:.0%}, load generator core {client:.0%}"
        if any(u.client_bound for u in runs):
            note += " -- LOAD GENERATOR BOUND (the server had CPU to spare)"
            self.load_bound = True
        self.notes.append(note)

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data.update(
            target=str(self.target), ratio=self.ratio, paired_ratios=self.paired, met=self.met
        )
        for name in ("ours", "baseline"):
            sample = getattr(self, name)
            if sample is not None:
                data[name] = {
                    "median": sample.median,
                    "min": min(sample.values),
                    "max": max(sample.values),
                    "values": sample.values,
                    "unit": sample.unit,
                }
        return data


def skipped(key: str, figure: str, target: Target, reason: str) -> Row:
    return Row(key, figure, target, status="skipped", reason=reason)


def failed(key: str, figure: str, target: Target, reason: str) -> Row:
    return Row(key, figure, target, status="error", reason=reason)


# -- the summary ------------------------------------------------------------------------------


def machine() -> dict[str, object]:
    """What the figures were measured on."""
    model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "tools": _versions(),
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "commit": commit,
    }


def _versions() -> dict[str, str]:
    """The first line each external tool prints about its version ("missing" when absent)."""
    found = {}
    for tool, flag in (("wrk", "-v"), ("etcd", "--version"), ("node", "--version")):
        try:
            done = subprocess.run([tool, flag], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            found[tool] = "missing"
            continue
        found[tool] = (done.stdout or done.stderr).strip().splitlines()[0].split(" Copyright")[0]
    return found


def _listed(tools: object) -> str:
    return "; ".join(f"{k}: {v}" for k, v in tools.items()) if isinstance(tools, dict) else ""


def _met(row: Row) -> str:
    if row.status != "measured":
        return row.status.upper()
    if row.met is None:
        return "-"
    return ("yes" if row.met else "NO") + (" (load generator bound)" if row.load_bound else "")


def markdown(rows: Sequence[Row], about: dict[str, object], mode: str) -> str:
    """The summary as Markdown: the table, then the notes of each figure."""
    lines = [
        f"# Benchmarks ({mode})",
        "",
        f"{about['date']} on {about['cpu']}, {about['cores']} cores, Python {about['python']}, "
        f"tree {about['commit']}; load average {about.get('load_average_start', '?')} at the "
        f"start, {about['load_average']} at the end; {about.get('seconds', '?')} s.",
        f"Tools: {_listed(about['tools'])}.",
        "Server on core 0, load generator on core 1; medians of the repetitions (min-max).",
        "",
        "| figure | ours | baseline | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        ours = str(row.ours) if row.ours else row.reason
        base = f"{row.baseline_name}: {row.baseline}" if row.baseline else "-"
        # Three decimals: 2.997x must not read as a 3x that failed its target.
        ratio = f"{row.ratio:.3f}x" if row.ratio is not None else "-"
        lines.append(f"| {row.figure} | {ours} | {base} | {ratio} | {row.target} | {_met(row)} |")
    lines += ["", "## Notes", ""]
    for row in rows:
        notes = ([row.reason] if row.reason and row.ours else []) + row.notes
        if row.paired:
            ratios = ", ".join(f"{ratio:.2f}x" for ratio in row.paired)
            notes.append(f"ratio of each repetition: {ratios}")
        for note in notes:
            lines.append(f"- {row.figure}: {note}")
    return "\n".join(lines) + "\n"


def write(rows: Sequence[Row], about: dict[str, object], mode: str, folder: Path) -> Path:
    """`<folder>/<name>.json` and `.md`, where name is `latest` (full run) or `smoke`."""
    folder.mkdir(parents=True, exist_ok=True)
    name = "latest" if mode == "full" else mode
    document = {"mode": mode, "machine": about, "figures": [row.as_dict() for row in rows]}
    (folder / f"{name}.json").write_text(json.dumps(document, indent=2) + "\n")
    path = folder / f"{name}.md"
    path.write_text(markdown(rows, about, mode))
    return path


def standalone(
    measure: Callable[[bool], list[Row]], doc: str | None, argv: Sequence[str] | None
) -> None:
    """Run one figure module on its own (`python -m bench.<module> [--smoke]`); print its rows."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check it works")
    smoke = parser.parse_args(argv).smoke
    pin_self()
    print(markdown(measure(smoke), machine(), "smoke" if smoke else "full"), flush=True)
