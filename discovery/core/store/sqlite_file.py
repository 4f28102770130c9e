"""The SQLite file of a store: taking it, checking it, its schema, and rows <-> instances.

One file belongs to one process: an exclusive `flock` on the file itself is held while the
store is open (SQLite's own locks are POSIX record locks, which `flock` does not touch), so
a second server fails at once while `sqlite3 FILE ".backup COPY"` can still read it.
Everything here blocks on disk and runs off the event loop.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from discovery.core.model import HealthStatus, Instance
from discovery.core.store.base import Restored, StoreFailure

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- registration order, never reused
    service_name TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    health_endpoint TEXT,
    metadata TEXT NOT NULL,
    registered_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'unknown',
    load_percentage REAL NOT NULL DEFAULT 0,
    critical_load INTEGER NOT NULL DEFAULT 0,
    critical_since REAL,
    last_heartbeat REAL,
    last_health_check REAL,
    revision INTEGER NOT NULL DEFAULT 0,
    UNIQUE (service_name, instance_id)
);
"""

#: A registration: new rows go to the end of the order, with the status they start with; a
#: stored one keeps its place, `registered_at` (a concurrent registration of the same instance
#: may have written it first) and liveness (written by the flushes).
UPSERT = """
INSERT INTO instances (service_name, instance_id, host, port, health_endpoint, metadata,
                       registered_at, status)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (service_name, instance_id) DO UPDATE SET
    host = excluded.host, port = excluded.port, health_endpoint = excluded.health_endpoint,
    metadata = excluded.metadata
"""
DELETE = "DELETE FROM instances WHERE service_name = ? AND instance_id = ?"
#: An expiry: the expired row only (by its `registered_at`), never a later registration.
DELETE_EXPIRED = DELETE + " AND registered_at = ?"
LIVENESS = """
UPDATE instances SET status = ?, load_percentage = ?, critical_load = ?, critical_since = ?,
    last_heartbeat = ?, last_health_check = ?, revision = ?
WHERE service_name = ? AND instance_id = ?
"""
REVISION = """
INSERT INTO meta (key, value) VALUES ('revision', ?)
ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)
"""
_SELECT = """
SELECT service_name, instance_id, host, port, health_endpoint, metadata, registered_at, status,
       load_percentage, critical_load, critical_since, last_heartbeat, last_health_check, revision
FROM instances ORDER BY seq
"""
_STATUSES = {status.value: status for status in HealthStatus}
#: `json.dumps(..., separators=(",", ":"))` without building an encoder per call.
_compact_json = json.JSONEncoder(separators=(",", ":")).encode


class Damaged(Exception):
    """A row or the schema is not what this server writes."""


class StoreFile:
    """An open, locked store file and its connection (used by one thread at a time)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_fd = _take(path)
        try:
            self.connection = _connect(path)
        except BaseException:
            os.close(self._lock_fd)
            raise

    def load(self) -> Restored:
        """Every stored instance in registration order, and the stored revision."""
        try:
            found = self.connection.execute("SELECT value FROM meta WHERE key = 'revision'")
            revision = (found.fetchone() or (0,))[0]
            metadata: dict[str, dict[str, str]] = {}
            instances = [instance_of(row, metadata) for row in self.connection.execute(_SELECT)]
        except (sqlite3.Error, Damaged, ValueError, TypeError) as exc:
            raise _damaged(self.path, exc) from None
        if not isinstance(revision, int):
            raise _damaged(self.path, "bad revision")
        return Restored(instances, revision)

    def close(self) -> None:
        """Fold the write-ahead log into the file, close, and let go of the lock."""
        try:
            with contextlib.suppress(sqlite3.Error):
                self.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self.connection.close()
        finally:
            os.close(self._lock_fd)


def _take(path: Path) -> int:
    """Create the folders and the file as needed and lock it; `StoreFailure` if not."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise StoreFailure(f"store {path} is a directory, not a file")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except (FileExistsError, NotADirectoryError):
        raise StoreFailure(f"cannot use store {path}: a parent is not a directory") from None
    except OSError as exc:
        raise StoreFailure(f"cannot use store {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise StoreFailure(
            f"store {path} is in use by another process (one store file serves one server)"
        ) from None
    return fd


def _connect(path: Path) -> sqlite3.Connection:
    try:
        connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreFailure(f"cannot open store {path}: {exc}") from None
    try:
        _prepare(connection, path)
    except sqlite3.DatabaseError as exc:
        connection.close()
        if "readonly" in str(exc) or "unable to open" in str(exc):
            raise StoreFailure(f"cannot write store {path}: {exc}") from None
        raise _damaged(path, exc) from None
    except BaseException:
        connection.close()
        raise
    return connection


def _prepare(connection: sqlite3.Connection, path: Path) -> None:
    """WAL mode, full sync, integrity, schema."""
    (mode,) = connection.execute("PRAGMA journal_mode = WAL").fetchone()
    if mode != "wal":
        raise StoreFailure(f"cannot use store {path}: write-ahead logging unavailable ({mode})")
    # Every acknowledged write must survive a crash of the machine too, not only of the process.
    connection.execute("PRAGMA synchronous = FULL")
    (verdict,) = connection.execute("PRAGMA quick_check").fetchone()
    if verdict != "ok":
        raise _damaged(path, verdict)
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    if tables and "instances" not in tables:
        raise _damaged(path, "not a service discovery store")
    connection.executescript(SCHEMA)
    found = connection.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    if found is None:
        connection.execute("INSERT INTO meta (key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))
    elif found[0] != SCHEMA_VERSION:
        raise _damaged(path, f"schema version {found[0]}, this server reads {SCHEMA_VERSION}")


def _damaged(path: Path, why: object) -> StoreFailure:
    return StoreFailure(
        f"store {path} is damaged or unreadable ({why}); restore a backup, or move the file "
        "away to start empty"
    )


def instance_of(row: tuple[Any, ...], parsed: dict[str, dict[str, str]]) -> Instance:
    """A stored row as an instance; `Damaged` when it is not what this server writes.

    `parsed` caches decoded metadata by its text: instances of one service mostly share it.
    """
    (service, instance_id, host, port, endpoint, metadata, registered_at, status, load) = row[:9]
    critical, critical_since, last_heartbeat, last_check, revision = row[9:]
    meta = parsed.get(metadata)
    if meta is None:
        meta = parsed[metadata] = _metadata(metadata, service, instance_id)
    if status not in _STATUSES:
        raise Damaged(f"status {status!r} of {service}:{instance_id}")
    if not (isinstance(service, str) and isinstance(instance_id, str) and isinstance(host, str)):
        raise Damaged(f"a name of {service}:{instance_id}")
    return Instance(
        service,
        instance_id,
        host,
        int(port),
        endpoint,
        meta,
        float(registered_at),
        _STATUSES[status],
        float(load),
        bool(critical),
        critical_since,
        last_heartbeat,
        last_check,
        int(revision),
    )


def _metadata(text: str, service: str, instance_id: str) -> dict[str, str]:
    meta = json.loads(text)
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise Damaged(f"metadata of {service}:{instance_id}")
    return meta


def registration_row(instance: Instance) -> tuple[Any, ...]:
    """The parameters of `UPSERT`."""
    return (
        instance.service_name,
        instance.instance_id,
        instance.host,
        instance.port,
        instance.health_endpoint,
        _compact_json(instance.metadata),
        instance.registered_at,
        instance.status.value,
    )


def liveness_row(instance: Instance) -> tuple[Any, ...]:
    """The parameters of `LIVENESS`."""
    return (
        instance.status.value,
        instance.load_percentage,
        instance.critical_load,
        instance.critical_since,
        instance.last_heartbeat,
        instance.last_health_check,
        instance.revision,
        instance.service_name,
        instance.instance_id,
    )
