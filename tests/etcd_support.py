"""Real etcd for the replica tests: one member or a three-member cluster on free loopback ports,
scratch data folders, stopped by process id. Members can be stopped and started again on the
same ports and data (an outage, a lost leader).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


@dataclass(frozen=True)
class Certificates:
    """A scratch CA with a server certificate for 127.0.0.1 and a client certificate (PEM)."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str

    @classmethod
    def make(cls, folder: str) -> Certificates:
        def run(*args: str) -> None:
            subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

        key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        run(
            "req",
            "-x509",
            *key,
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=discovery-test-ca",
        )
        for name, usage in (("server", "serverAuth,clientAuth"), ("client", "clientAuth")):
            run(
                "req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}"
            )
            with open(os.path.join(folder, f"{name}.ext"), "w") as ext:
                ext.write(f"subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\n")
            run(
                "x509",
                "-req",
                "-in",
                f"{name}.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                f"{name}.crt",
                "-days",
                "2",
                "-extfile",
                f"{name}.ext",
            )
        path = functools.partial(os.path.join, folder)
        return cls(
            path("ca.crt"),
            path("server.crt"),
            path("server.key"),
            path("client.crt"),
            path("client.key"),
        )

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca)
        context.load_cert_chain(self.client_cert, self.client_key)
        return context


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Member:
    """One etcd member: its ports, data folder and (while it runs) its process."""

    name: str
    client_port: int
    peer_port: int
    data_dir: str
    cluster: str = ""
    state: str = "new"
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    log_path: str = ""
    tls: Certificates | None = None

    @property
    def client_url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self) -> None:
        """Start the member (again, on the same ports and data)."""
        assert self.proc is None or self.proc.poll() is not None
        command = [
            ETCD,
            "--name",
            self.name,
            "--data-dir",
            self.data_dir,
            "--listen-client-urls",
            self.client_url,
            "--advertise-client-urls",
            self.client_url,
            "--listen-peer-urls",
            self.peer_url,
            "--initial-advertise-peer-urls",
            self.peer_url,
            "--initial-cluster",
            self.cluster,
            "--initial-cluster-state",
            self.state,
            "--initial-cluster-token",
            "discovery-tests",
            # Fast elections: a lost leader is replaced within about a second.
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
            "--log-level",
            "warn",
            "--logger",
            "zap",
        ]
        if self.tls is not None:
            command += [
                "--cert-file",
                self.tls.server_cert,
                "--key-file",
                self.tls.server_key,
                "--trusted-ca-file",
                self.tls.ca,
                "--client-cert-auth",
            ]
        self.log_path = os.path.join(os.path.dirname(self.data_dir), f"{self.name}.log")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the member by its process id (SIGKILL after 10 s)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def healthy(self) -> bool:
        with (
            contextlib.suppress(OSError, ValueError),
            urllib.request.urlopen(
                f"{self.client_url}/health",
                timeout=1,
                context=None if self.tls is None else self.tls.context(),
            ) as answer,
        ):
            return bool(json.load(answer).get("health") == "true")
        return False

    def is_leader(self) -> bool:
        """Whether this member leads (from its JSON gateway's status)."""
        request = urllib.request.Request(
            f"{self.client_url}/v3/maintenance/status", data=b"{}", method="POST"
        )
        with urllib.request.urlopen(request, timeout=2) as answer:
            status = json.load(answer)
        return bool(status["header"]["member_id"] == status["leader"])

    def tail(self) -> str:
        with contextlib.suppress(OSError), open(self.log_path, "rb") as log:
            return log.read()[-2000:].decode(errors="replace")
        return ""


class Etcd:
    """A running etcd (one member or several), for `SERVICE_DISCOVERY_STORE`."""

    def __init__(self, members: Sequence[Member], root: str) -> None:
        self.members = list(members)
        self._root = root

    @property
    def endpoints(self) -> str:
        return ",".join(m.endpoint for m in self.members)

    def store(self, prefix: str = "/service-discovery") -> str:
        """The `SERVICE_DISCOVERY_STORE` value for this etcd."""
        return f"etcd://{self.endpoints}{prefix}"

    async def wait_healthy(self, within: float = 30.0) -> None:
        """Until every running member answers healthy (a leader is elected)."""
        deadline = time.monotonic() + within
        running = [m for m in self.members if m.proc is not None and m.proc.poll() is None]
        while time.monotonic() < deadline:
            checks = await asyncio.gather(*(asyncio.to_thread(m.healthy) for m in running))
            if all(checks):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(
            "etcd did not become healthy: " + " | ".join(m.tail() for m in running)
        )

    def leader(self) -> Member:
        for member in self.members:
            if member.proc is not None and member.proc.poll() is None and member.is_leader():
                return member
        raise AssertionError("no etcd leader")

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def start(self) -> None:
        for member in self.members:
            member.state = "existing"
            member.start()

    def enable_auth(self, user: str, password: str) -> None:
        """Create `user` with the root role and turn authentication on (JSON gateway; etcd wants
        a `root` user first)."""
        url = self.members[0].client_url
        for path, message in (
            ("/v3/auth/role/add", {"name": "root"}),
            ("/v3/auth/user/add", {"name": "root", "password": password}),
            ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
            ("/v3/auth/user/add", {"name": user, "password": password}),
            ("/v3/auth/user/grant", {"user": user, "role": "root"}),
            ("/v3/auth/enable", {}),
        ):
            request = urllib.request.Request(url + path, data=json.dumps(message).encode())
            with urllib.request.urlopen(request, timeout=5) as answer:
                answer.read()

    def json_get_prefix(self, prefix: str) -> list[tuple[str, str]]:
        """Every key and value under `prefix`, read over the JSON gateway (base64 on the wire)."""
        import base64

        key = prefix.encode()
        end = key[:-1] + bytes([key[-1] + 1])
        body = json.dumps(
            {"key": base64.b64encode(key).decode(), "range_end": base64.b64encode(end).decode()}
        ).encode()
        for member in self.members:
            if member.proc is None or member.proc.poll() is not None:
                continue
            request = urllib.request.Request(f"{member.client_url}/v3/kv/range", data=body)
            with urllib.request.urlopen(request, timeout=5) as answer:
                kvs = json.load(answer).get("kvs", [])
            return [
                (base64.b64decode(kv["key"]).decode(), base64.b64decode(kv["value"]).decode())
                for kv in kvs
            ]
        raise AssertionError("no etcd member running")


def _start(size: int, tls: bool = False) -> tuple[Etcd, str]:
    root = tempfile.mkdtemp(prefix="discovery-etcd-")
    certificates = Certificates.make(root) if tls else None
    members = [
        Member(f"m{i}", free_port(), free_port(), os.path.join(root, f"m{i}.data"))
        for i in range(size)
    ]
    for member in members:
        member.tls = certificates
    cluster = ",".join(f"{m.name}={m.peer_url}" for m in members)
    for member in members:
        member.cluster = cluster
        member.start()
    return Etcd(members, root), root


@contextlib.asynccontextmanager
async def running_etcd(size: int = 1, tls: bool = False) -> AsyncIterator[Etcd]:
    """Start an etcd of `size` members on free ports with scratch data (serving TLS only, and
    asking for client certificates, with `tls`); stop it at the end."""
    etcd, root = _start(size, tls)
    try:
        await etcd.wait_healthy()
        yield etcd
    finally:
        etcd.stop()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def started_etcd() -> Iterator[Etcd]:
    """`running_etcd(1)` for synchronous fixtures (one etcd for a whole session)."""
    etcd, root = _start(1)
    try:
        deadline = time.monotonic() + 30
        while not etcd.members[0].healthy():
            if time.monotonic() > deadline:
                raise AssertionError("etcd did not become healthy: " + etcd.members[0].tail())
            time.sleep(0.1)
        yield etcd
    finally:
        etcd.stop()
        shutil.rmtree(root, ignore_errors=True)


def compact(etcd: Etcd) -> int:
    """Compact the history of `etcd` up to its current revision (over the JSON gateway); the
    revision compacted to."""
    member = next(m for m in etcd.members if m.proc is not None and m.proc.poll() is None)

    def call(path: str, message: dict[str, object]) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{member.client_url}{path}", data=json.dumps(message).encode()
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            result: dict[str, Any] = json.load(answer)
        return result

    revision = int(call("/v3/kv/range", {"key": "AA=="})["header"]["revision"])
    call("/v3/kv/compaction", {"revision": revision, "physical": True})
    return revision


class Cutter:
    """A TCP relay to one address that the test can cut (every connection closed, new ones
    refused) and restore: a network partition between one client and etcd."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.open = True
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Listen on a free 127.0.0.1 port; that port."""
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def cut(self) -> None:
        self.open = False
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def restore(self) -> None:
        self.open = True

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.discard(writer)
        self._writers.discard(up_writer)
