"""Plain-text tables for people, fitted to the terminal's width."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from datetime import UTC, datetime

from discovery.ctl.records import Record

_GAP = "  "


def terminal_width() -> int:
    """The terminal's width ($COLUMNS, the tty's, else 100)."""
    return shutil.get_terminal_size((100, 24)).columns


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], width: int) -> str:
    """Rows under their headers in aligned columns, fitted into `width`: when the whole is wider,
    the widest columns are cut (with `…`), never below their header; when even that is too
    wide, columns are left out from the right (so put the least needed last)."""
    count = len(headers)
    while count > 2 and _narrowest(headers[:count]) > width:
        count -= 1
    headers = headers[:count]
    rows = [row[:count] for row in rows]
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    floors = [max(len(header), 6) for header in headers]
    budget = width - len(_GAP) * (count - 1)
    while sum(widths) > budget:
        cuttable = [i for i in range(count) if widths[i] > floors[i]]
        if not cuttable:
            break
        widest = max(cuttable, key=lambda i: widths[i])
        widths[widest] -= 1
    lines = [_line(headers, widths)] + [_line(row, widths) for row in rows]
    return "\n".join(lines)


def _narrowest(headers: Sequence[str]) -> int:
    return sum(max(len(header), 6) for header in headers) + len(_GAP) * (len(headers) - 1)


def _line(cells: Sequence[str], widths: Sequence[int]) -> str:
    return _GAP.join(_fit(cell, size) for cell, size in zip(cells, widths, strict=True)).rstrip()


def _fit(text: str, size: int) -> str:
    text = "".join(ch if ch.isprintable() else "?" for ch in text)  # no control characters
    return text.ljust(size) if len(text) <= size else text[: size - 1] + "…"


def address(record: Record) -> str:
    host = record["host"]
    return f"[{host}]:{record['port']}" if ":" in host else f"{host}:{record['port']}"


def ago(timestamp: str | None, now: datetime | None = None) -> str:
    """`3s ago`, `5m ago`, `2h ago`, `4d ago`, or `-` for no time."""
    if timestamp is None:
        return "-"
    now = now or datetime.now(UTC)
    seconds = max(0.0, (now - datetime.fromisoformat(timestamp)).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def load(record: Record) -> str:
    text = f"{record['load_percentage'] * 100:.0f}%"
    return text + " CRITICAL" if record["critical_load"] else text


INSTANCE_HEADERS = ("SERVICE", "INSTANCE", "ADDRESS", "STATUS", "LOAD", "HEARTBEAT", "PROBED")


def instance_row(record: Record) -> list[str]:
    return [
        record["service_name"],
        record["instance_id"],
        address(record),
        record["status"],
        load(record),
        ago(record["last_heartbeat"]),
        ago(record["last_health_check"]),
    ]


def instances(records: Sequence[Record], width: int) -> str:
    """A table of instance records."""
    return table(INSTANCE_HEADERS, [instance_row(r) for r in records], width)


def alerts(records: Sequence[Record], width: int) -> str:
    """A table of open alerts."""
    rows = [
        [
            a["service_name"],
            a["instance_id"],
            f"{a['load_percentage'] * 100:.0f}%",
            f"{a['threshold'] * 100:.0f}%",
            ago(a["since"]),
        ]
        for a in records
    ]
    return table(("SERVICE", "INSTANCE", "LOAD", "THRESHOLD", "SINCE"), rows, width)


def event_line(data: Record) -> str:
    """One watch event on one line: `REVISION TYPE service/instance address status load`."""
    head = f"{data['revision']:>6} {data['type']:<8}"
    record = data.get("instance")
    if record is None:
        return head.rstrip()
    name = f"{record['service_name']}/{record['instance_id']}"
    return _fit(f"{head} {name} {address(record)} {record['status']} {load(record)}", 10_000)
