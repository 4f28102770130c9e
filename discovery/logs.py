"""Logging set-up for the console entry: text for people (the default) or one JSON object a line.

`LOG_FORMAT=json` suits log shippers (Loki, Elasticsearch, Cloud Logging): every record is one
line holding `time` (ISO 8601 with its UTC offset), `level`, `logger` and `message`, plus
`exc_info` (the formatted traceback) and `stack_info` when the record has them, and any fields a
caller passed with `extra=`.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        # ensure_ascii: a line stays one line and plain ASCII whatever the message holds.
        return json.dumps(entry, default=str)


def early_line(message: str, env: Mapping[str, str]) -> str:
    """An ERROR line written before logging is set up (a bad setting), in the format that
    `LOG_FORMAT` asks for when it can be told."""
    if env.get("LOG_FORMAT", "").strip().lower() != "json":
        return message
    record = logging.makeLogRecord(
        {"name": "discovery", "levelname": "ERROR", "levelno": logging.ERROR, "msg": message}
    )
    return JsonFormatter().format(record)


def configure(level: str, log_format: str = "text") -> None:
    """Send every record at `level` or above to stderr, as text or (`json`) JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # Warnings (DeprecationWarning and the like) go through logging too, so JSON stays JSON.
    logging.captureWarnings(True)
    # uvicorn's start and stop chatter repeats ours (under the confusing name "uvicorn.error");
    # httpx and httpcore log every probe request at INFO (a line per probe): the probe outcomes
    # that change a status are what the health monitor logs.
    if logging.getLevelNamesMapping()[level] > logging.DEBUG:
        for name in ("uvicorn.error", "httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)
