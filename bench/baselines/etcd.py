"""etcd 3.4 (Debian's etcd-server) on loopback, scratch data folder, pinned to the server core.

Used as the baseline users would otherwise run: lease keepalive through its JSON gateway
(`POST /v3/lease/keepalive`, one HTTP request per heartbeat) for heartbeats, and its own gRPC
Watch for fan-out. Pinned to one core, Go's scheduler runs on that core only (GOMAXPROCS
follows the CPU affinity), as the Python servers do.

The few etcd messages the benches send are encoded here by hand (field numbers from etcd's
`rpc.proto`), so no etcd client library is needed.
"""

from __future__ import annotations

import contextlib
import json
import socket
import tempfile
import time
import urllib.request
from collections.abc import Iterator

from bench.common import SERVER_CPU, BenchError, Process
from bench.tools import ensure

WATCH = "/etcdserverpb.Watch/Watch"
PUT = "/etcdserverpb.KV/Put"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def etcd() -> Iterator[tuple[Process, int]]:
    """A running etcd; yields the process and its client port (gRPC and JSON gateway)."""
    ensure("etcd")
    client, peer = _free_port(), _free_port()
    url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
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
            peer_url,
            "--initial-advertise-peer-urls",
            peer_url,
            "--initial-cluster",
            f"default={peer_url}",
            "--log-level",
            "error",
        ]
        process = Process(command, cpu=SERVER_CPU)
        try:
            _wait_ready(url, process)
            yield process, client
        finally:
            process.stop()


def _wait_ready(url: str, process: Process) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and process.proc.poll() is None:
        with (
            contextlib.suppress(OSError, ValueError),
            urllib.request.urlopen(f"{url}/health", timeout=1) as answer,
        ):
            if json.load(answer).get("health") == "true":
                return
        time.sleep(0.1)
    raise BenchError(f"etcd did not become healthy: {process.tail()}")


def post(port: int, path: str, body: dict[str, object]) -> dict[str, object]:
    """One JSON gateway call."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        result: dict[str, object] = json.load(answer)
        return result


def grant_leases(port: int, count: int, ttl: int = 300) -> list[str]:
    """Lease IDs, as the JSON gateway spells them (decimal strings)."""
    return [str(post(port, "/v3/lease/grant", {"TTL": ttl})["ID"]) for _ in range(count)]


# -- hand-encoded protobuf for the gRPC API ---------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def watch_prefix(prefix: bytes) -> bytes:
    """WatchRequest{create_request: WatchCreateRequest{key: prefix, range_end: prefix + 1}}."""
    range_end = prefix[:-1] + bytes([prefix[-1] + 1])
    return _field(1, _field(1, prefix) + _field(2, range_end))


def put(key: bytes, value: bytes) -> bytes:
    """PutRequest{key, value}."""
    return _field(1, key) + _field(2, value)
