"""The README's backup and restore steps, run as written against a real server process."""

from __future__ import annotations

import asyncio
import shlex
import sys
from pathlib import Path

from tests.conftest import AUTH, registration
from tests.store_processes import clients, records, server_on

README = Path(__file__).resolve().parent.parent / "README.md"


def backup_command() -> list[str]:
    """The README's online-backup one-liner (run from the server's working directory)."""
    lines = [line for line in README.read_text().splitlines() if line.startswith("python -c ")]
    backups = [line for line in lines if ".backup(" in line and "registry.db" in line]
    assert len(backups) == 1, f"one backup command expected in the README, found {backups}"
    return [sys.executable, *shlex.split(backups[0])[1:]]


async def test_an_online_backup_restores_exactly_what_it_held(tmp_path: Path) -> None:
    path = tmp_path / "data" / "registry.db"
    async with server_on(path) as process, clients(process) as (rest, _):
        for n in range(3):
            body = registration(instance=f"kept-{n}", metadata={"n": str(n)})
            assert (await rest.post("/v1/discovery/register", json=body, headers=AUTH)).is_success
        kept = await records(rest)
        # Taken while the server runs and holds its lock on the file.
        backup = await asyncio.create_subprocess_exec(*backup_command(), cwd=tmp_path)
        assert await asyncio.wait_for(backup.wait(), 30) == 0
        body = registration(instance="after-the-backup")
        assert (await rest.post("/v1/discovery/register", json=body, headers=AUTH)).is_success
        assert await process.stop() == 0

    copy = tmp_path / "copy.db"
    assert copy.exists()
    for leftover in (path, path.with_name("registry.db-wal"), path.with_name("registry.db-shm")):
        leftover.unlink(missing_ok=True)
    copy.rename(path)

    async with server_on(path) as process, clients(process) as (rest, _):
        assert f"{path} (3 instances restored)" in process.output
        restored = await records(rest)
        keys = ("instance_id", "host", "port", "health_endpoint", "metadata", "registered_at")
        assert [{k: r[k] for k in keys} for r in restored["game"]] == [
            {k: r[k] for k in keys} for r in kept["game"]
        ]
        assert await process.stop() == 0
