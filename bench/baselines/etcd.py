"""etcd 3.4 (Debian's etcd-server) on loopback, scratch data folder, pinned to the server core.

Used as the baseline users would otherwise run: lease keepalive through its JSON gateway
(`/v3/lease/keepalive`) for heartbeats, and its watch for fan-out.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator

from bench.common import SERVER_CPU, pinned
from bench.tools import ensure


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def etcd() -> Iterator[str]:
    """A running etcd; yields its client URL."""
    ensure("etcd")
    client, peer = _free_port(), _free_port()
    url = f"http://127.0.0.1:{client}"
    with tempfile.TemporaryDirectory() as data:
        command = [
            "etcd",
            "--data-dir",
            data,
            "--listen-client-urls",
            url,
            "--advertise-client-urls",
            url,
            "--listen-peer-urls",
            f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{peer}",
            "--initial-cluster",
            f"default=http://127.0.0.1:{peer}",
            "--log-level",
            "error",
        ]
        proc = subprocess.Popen(
            pinned(command, SERVER_CPU), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            _wait_ready(url)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{url}/health", timeout=1) as answer,
        ):
            if json.load(answer).get("health") == "true":
                return
        time.sleep(0.1)
    raise RuntimeError("etcd did not become healthy")


def post(url: str, path: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(
        f"{url}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        result: dict[str, object] = json.load(answer)
        return result


def grant_leases(url: str, count: int, ttl: int = 300) -> list[str]:
    """Lease IDs, as the JSON gateway spells them (decimal strings)."""
    return [str(post(url, "/v3/lease/grant", {"TTL": ttl})["ID"]) for _ in range(count)]
