"""A real grpcio client resolving `xds:///echo` through this server reaches the healthy
backends only: three gRPC backends, the server as a subprocess, the
client as another, no SDK of ours in the client."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from discovery.testing import ServerProcess, eventually
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc
from tests.certs import make_certificates
from tests.conftest import Stub

SERVICE = "echo"
CLIENT = Path(__file__).with_name("xds_grpc_client.py")

pytestmark = pytest.mark.slow


class Backend:
    """A gRPC server answering /echo.Echo/Who with its own id."""

    def __init__(self, ident: str) -> None:
        self.ident = ident
        self.server = grpc.aio.server()
        self.port = 0

    async def start(self) -> None:
        async def who(request: bytes, context: Any) -> bytes:
            return self.ident.encode()

        handler = grpc.method_handlers_generic_handler(
            "echo.Echo", {"Who": grpc.unary_unary_rpc_method_handler(who)}
        )
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()

    def registration(self) -> pb.RegisterRequest:
        return pb.RegisterRequest(
            service_name=SERVICE,
            instance_id=self.ident,
            host="127.0.0.1",
            port=self.port,
            health_endpoint="",  # heartbeat-only
        )


class Client:
    """The xDS client subprocess: `await calls(n)` counts n replies by backend."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, grpc_port: int, creds: dict[str, Any] | None = None) -> Client:
        bootstrap = {
            "xds_servers": [
                {
                    "server_uri": f"127.0.0.1:{grpc_port}",
                    "channel_creds": [creds or {"type": "insecure"}],
                    "server_features": ["xds_v3"],
                }
            ],
            "node": {"id": "xds-test-client", "locality": {"zone": "test"}},
        }
        env = {**os.environ, "GRPC_XDS_BOOTSTRAP_CONFIG": json.dumps(bootstrap)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(CLIENT),
            f"xds:///{SERVICE}",
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        client = cls(proc)
        assert await client._line(30) == {"ready": True}
        return client

    async def calls(self, count: int = 30) -> dict[str, int]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{count}\n".encode())
        await self.proc.stdin.drain()
        return await self._line(60)

    async def _line(self, within: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), within)
        assert line, "the xDS client exited"
        found: dict[str, Any] = json.loads(line)
        return found

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


@pytest.fixture
async def backends() -> AsyncIterator[list[Backend]]:
    started = [Backend(f"b{i}") for i in (1, 2, 3)]
    for backend in started:
        await backend.start()
    yield started
    for backend in started:
        await backend.server.stop(None)


async def reached(client: Client, expected: set[str], within: float) -> float:
    """Wait until a window of calls reaches exactly `expected`; how long it took."""
    last: list[dict[str, int]] = []

    async def check() -> bool:
        counts = await client.calls(30)
        last[:] = [counts]
        return set(counts) == expected

    try:
        return await eventually(check, within, every=0.05)
    except TimeoutError:
        raise AssertionError(f"calls reached {last} instead of {expected}") from None


@pytest.mark.parametrize("policy", ["round_robin", "ring_hash"])
async def test_grpc_xds_client_follows_the_healthy_set(
    backends: list[Backend], policy: str
) -> None:
    async with (
        await ServerProcess.start(env={"XDS_LB_POLICY": policy}) as process,
        grpc.aio.insecure_channel(process.grpc_target) as channel,
    ):
        stub = pb_grpc.DiscoveryServiceStub(channel)
        b1, b2, b3 = backends
        for backend in (b1, b3):
            await stub.Register(backend.registration())
        await stub.Register(b2.registration())
        # b2 is kept alive by a KeepAlive stream: breaking it turns b2 unhealthy at once.
        keepalive = stub.KeepAlive(None)
        await keepalive.write(pb.KeepAliveRequest(service_name=SERVICE, instance_id="b2"))
        ack = await keepalive.read()
        assert isinstance(ack, pb.KeepAliveResponse)
        assert ack.code == 0

        client = await Client.start(process.grpc_port)
        try:
            everyone = {"b1", "b2", "b3"}
            await reached(client, everyone, within=30)
            if policy == "ring_hash":
                await weights_steer_calls(stub, client)

            keepalive.cancel()
            await eventually(lambda: _status(stub, "b2", pb.HEALTH_STATUS_UNHEALTHY), 5)
            await reached(client, {"b1", "b3"}, within=2)
            assert set(await client.calls(60)) == {"b1", "b3"}

            await stub.Heartbeat(pb.HeartbeatRequest(service_name=SERVICE, instance_id="b2"))
            await reached(client, everyone, within=5)

            await stub.Unregister(pb.UnregisterRequest(service_name=SERVICE, instance_id="b3"))
            await reached(client, {"b1", "b2"}, within=2)
            assert set(await client.calls(60)) == {"b1", "b2"}

            await stub.Register(b3.registration())
            await reached(client, everyone, within=5)
        finally:
            await client.stop()
        assert await process.stop() == 0


async def test_grpc_xds_client_over_mutual_tls(backends: list[Backend], tmp_path: Path) -> None:
    """With TLS on the server, the bootstrap's `tls` channel credentials reach it."""
    certs = make_certificates(tmp_path)
    env = {
        "SERVICE_DISCOVERY_TLS_CERT_FILE": str(certs.server.cert),
        "SERVICE_DISCOVERY_TLS_KEY_FILE": str(certs.server.key),
        "SERVICE_DISCOVERY_TLS_CLIENT_CA_FILE": str(certs.ca),
    }
    credentials = grpc.ssl_channel_credentials(
        root_certificates=certs.ca.read_bytes(),
        private_key=certs.client.key.read_bytes(),
        certificate_chain=certs.client.cert.read_bytes(),
    )
    async with (
        await ServerProcess.start(env=env) as process,
        grpc.aio.secure_channel(process.grpc_target, credentials) as channel,
    ):
        stub = pb_grpc.DiscoveryServiceStub(channel)
        for backend in backends:
            await stub.Register(backend.registration())
        tls = {
            "type": "tls",
            "config": {
                "ca_certificate_file": str(certs.ca),
                "certificate_file": str(certs.client.cert),
                "private_key_file": str(certs.client.key),
            },
        }
        client = await Client.start(process.grpc_port, tls)
        try:
            await reached(client, {"b1", "b2", "b3"}, within=30)
        finally:
            await client.stop()


async def weights_steer_calls(stub: Stub, client: Client) -> None:
    """ring_hash follows the endpoint weights: b1 at load 0.99 (weight 1, the others 100) gets
    about 0.5% of the calls (rings are random per call here: no hash policy)."""
    load = pb.HeartbeatRequest(service_name=SERVICE, instance_id="b1", load_percentage=0.99)
    await stub.Heartbeat(load)

    async def rarely_b1() -> bool:
        counts = await client.calls(300)
        return counts.get("b1", 0) < 30 and counts.get("b2", 0) > 90

    await eventually(rarely_b1, within=10, every=0.05)
    load.load_percentage = 0.0
    await stub.Heartbeat(load)


async def _status(stub: Stub, instance: str, status: int) -> bool:
    response = await stub.GetService(pb.GetServiceRequest(service_name=SERVICE))
    return any(i.instance_id == instance and i.status == status for i in response.instances)
