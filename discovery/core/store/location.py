"""`SERVICE_DISCOVERY_STORE` -> the store it names (nothing is opened until `Store.open`)."""

from __future__ import annotations

from pathlib import Path

from discovery.core.store.base import Store
from discovery.core.store.memory import MemoryStore
from discovery.core.store.sqlite import WRITE_TIMEOUT, SqliteStore


def store_at(location: str, write_timeout: float = WRITE_TIMEOUT) -> Store:
    """The store for a checked setting value: `memory` or `sqlite:PATH` (relative to the
    working directory), whose writes give up after `write_timeout` seconds."""
    if location == "memory":
        return MemoryStore()
    if location.startswith("sqlite:"):
        return SqliteStore(Path(location.removeprefix("sqlite:")), write_timeout=write_timeout)
    raise ValueError(f"unknown store {location!r}")
