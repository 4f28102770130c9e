"""A real Prometheus (Debian's `prometheus` package, installed by `make test`) for the tests.

`async with prometheus(tmp_path, config) as api:` starts it on a free loopback port with that
configuration and a data folder under `tmp_path`, waits until it is ready, and stops it by its
process id afterwards. `api` is an httpx client on its HTTP API.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from discovery.testing import eventually


def binary() -> str:
    found = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(found).exists():
        raise AssertionError("prometheus is not installed: `make test` installs it (apt)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def prometheus(tmp_path: Path, config: str) -> AsyncIterator[httpx.AsyncClient]:
    """Prometheus running `config` (YAML text) until the block ends."""
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(config)
    log = (tmp_path / "prometheus.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        binary(),
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as api:

            async def ready() -> bool:
                if proc.returncode is not None:
                    raise AssertionError(
                        "prometheus exited:\n" + (tmp_path / "prometheus.log").read_text()
                    )
                try:
                    return (await api.get("/-/ready")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(ready, within=30, every=0.1)
            yield api
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()


async def active_targets(api: httpx.AsyncClient, job: str) -> list[dict[str, Any]]:
    """The targets Prometheus currently scrapes for `job`."""
    response = await api.get("/api/v1/targets", params={"state": "active"})
    response.raise_for_status()
    targets: list[dict[str, Any]] = response.json()["data"]["activeTargets"]
    return [t for t in targets if t["labels"].get("job") == job]


async def query(api: httpx.AsyncClient, expression: str) -> list[dict[str, Any]]:
    """The result of an instant PromQL query (a vector)."""
    response = await api.get("/api/v1/query", params={"query": expression})
    response.raise_for_status()
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result
