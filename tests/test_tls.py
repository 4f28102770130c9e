"""TLS and mutual TLS on both ports: REST over https, gRPC secure channels, the SDK and
discoveryctl; plain connections and missing client certificates are refused."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest

from discovery.client import DiscoveryClient, ServiceWatcher
from discovery.core.settings import ConfigError, Settings
from discovery.main import parse_args
from discovery.server import DiscoveryServer
from discovery.testing import ServerProcess, eventually, run_server
from discovery.tls import load_server_tls
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc
from tests.certs import Certificates, Pair, make_certificates
from tests.ctl import ctl


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture
async def tls_server(certs: Certificates) -> AsyncIterator[DiscoveryServer]:
    async with run_server(
        tls_cert_file=str(certs.server.cert), tls_key_file=str(certs.server.key)
    ) as server:
        yield server


@pytest.fixture
async def mtls_server(certs: Certificates) -> AsyncIterator[DiscoveryServer]:
    async with run_server(
        tls_cert_file=str(certs.server.cert),
        tls_key_file=str(certs.server.key),
        tls_client_ca_file=str(certs.ca),
    ) as server:
        yield server


def https_context(certs: Certificates, client: Pair | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca))
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    return context


def grpc_credentials(certs: Certificates, client: Pair | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=certs.ca.read_bytes(),
        private_key=client.key.read_bytes() if client else None,
        certificate_chain=client.cert.read_bytes() if client else None,
    )


async def list_services(channel: grpc.aio.Channel) -> pb.ListServicesResponse:
    stub = pb_grpc.DiscoveryServiceStub(channel)
    return await stub.ListServices(pb.ListServicesRequest(), timeout=5)


async def test_rest_serves_https_only(tls_server: DiscoveryServer, certs: Certificates) -> None:
    assert tls_server.rest_url.startswith("https://")
    async with httpx.AsyncClient(verify=https_context(certs), timeout=5) as client:
        response = await client.get(f"{tls_server.rest_url}/health")
    assert response.status_code == 200
    assert response.json()["status"] == "healthy"
    plain = tls_server.rest_url.replace("https://", "http://")
    async with httpx.AsyncClient(timeout=5) as client:
        with pytest.raises(httpx.TransportError):
            await client.get(f"{plain}/health")


async def test_rest_certificate_is_checked_by_clients(
    tls_server: DiscoveryServer, tmp_path: Path
) -> None:
    stranger = make_certificates(tmp_path)  # another CA, which did not sign the server's cert
    async with httpx.AsyncClient(verify=https_context(stranger), timeout=5) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"{tls_server.rest_url}/health")


async def test_grpc_serves_tls_only(tls_server: DiscoveryServer, certs: Certificates) -> None:
    async with grpc.aio.secure_channel(tls_server.grpc_target, grpc_credentials(certs)) as channel:
        assert (await list_services(channel)).services == []
    async with grpc.aio.insecure_channel(tls_server.grpc_target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await list_services(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_needs_a_client_certificate_on_rest(
    mtls_server: DiscoveryServer, certs: Certificates
) -> None:
    url = f"{mtls_server.rest_url}/v1/discovery/services"
    async with httpx.AsyncClient(verify=https_context(certs, certs.client), timeout=5) as client:
        assert (await client.get(url)).json() == {"services": {}}
    for client_pair in (None, certs.stranger):
        async with httpx.AsyncClient(verify=https_context(certs, client_pair), timeout=5) as client:
            with pytest.raises(httpx.TransportError):
                await client.get(url)


async def test_mutual_tls_needs_a_client_certificate_on_grpc(
    mtls_server: DiscoveryServer, certs: Certificates
) -> None:
    target = mtls_server.grpc_target
    async with grpc.aio.secure_channel(target, grpc_credentials(certs, certs.client)) as channel:
        assert (await list_services(channel)).services == []
    for client_pair in (None, certs.stranger):
        credentials = grpc_credentials(certs, client_pair)
        async with grpc.aio.secure_channel(target, credentials) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await list_services(channel)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_sdk_over_mutual_tls(mtls_server: DiscoveryServer, certs: Certificates) -> None:
    ca, cert, key = str(certs.ca), str(certs.client.cert), str(certs.client.key)
    target = mtls_server.grpc_target
    async with (
        ServiceWatcher(
            target, ["game"], healthy_only=False, ca_file=ca, cert_file=cert, key_file=key
        ) as watcher,
        DiscoveryClient(target, ca_file=ca, cert_file=cert, key_file=key) as client,
    ):
        await client.register("game", "game-1", "127.0.0.1", 8080, health_endpoint=None)
        await eventually(lambda: [i.instance_id for i in watcher.instances("game")] == ["game-1"])


async def test_sdk_over_tls_without_the_ca_is_refused(
    tls_server: DiscoveryServer, tmp_path: Path
) -> None:
    stranger = make_certificates(tmp_path)
    async with DiscoveryClient(tls_server.grpc_target, ca_file=str(stranger.ca)) as client:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.register("game", "game-1", "127.0.0.1", 8080)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_discoveryctl_over_mutual_tls(
    mtls_server: DiscoveryServer, certs: Certificates
) -> None:
    tls = ["--ca", str(certs.ca), "--cert", str(certs.client.cert), "--key", str(certs.client.key)]
    server = ["--server", mtls_server.grpc_target]
    done = await ctl(*server, *tls, "register", "game", "game-1", "127.0.0.1", "8080")
    assert done.code == 0, done.err
    listed = await ctl("services", "--json", *server, *tls)
    assert listed.code == 0, listed.err
    assert [r["instance_id"] for r in listed.json()["services"]["game"]] == ["game-1"]
    no_client_cert = await ctl(*server, "--ca", str(certs.ca), "services")
    assert no_client_cert.code == 3
    assert "cannot reach" in no_client_cert.err
    plain = await ctl(*server, "services")
    assert plain.code == 3


@pytest.mark.parametrize(
    "variable",
    [
        "SERVICE_DISCOVERY_TLS_CERT_FILE",
        "SERVICE_DISCOVERY_TLS_KEY_FILE",
        "SERVICE_DISCOVERY_TLS_CLIENT_CA_FILE",
    ],
)
async def test_a_missing_file_stops_start_up_with_exit_2(
    certs: Certificates, tmp_path: Path, variable: str
) -> None:
    env = {
        "SERVICE_DISCOVERY_STORE": "memory",
        "SERVICE_DISCOVERY_TLS_CERT_FILE": str(certs.server.cert),
        "SERVICE_DISCOVERY_TLS_KEY_FILE": str(certs.server.key),
        "SERVICE_DISCOVERY_TLS_CLIENT_CA_FILE": str(certs.ca),
        variable: str(tmp_path / "absent.pem"),
    }
    async with await ServerProcess.start(env=env, wait=False) as process:
        assert await process.wait() == 2
    assert variable in process.output
    assert "listening" not in process.output


async def test_a_certificate_without_its_key_stops_start_up(certs: Certificates) -> None:
    env = {
        "SERVICE_DISCOVERY_STORE": "memory",
        "SERVICE_DISCOVERY_TLS_CERT_FILE": str(certs.server.cert),
        "SERVICE_DISCOVERY_TLS_KEY_FILE": str(certs.client.key),  # not the server's key
    }
    async with await ServerProcess.start(env=env, wait=False) as process:
        assert await process.wait() == 2
    assert "SERVICE_DISCOVERY_TLS_CERT_FILE" in process.output


async def test_the_console_script_serves_tls(certs: Certificates) -> None:
    env = {
        "SERVICE_DISCOVERY_STORE": "memory",
        "SERVICE_DISCOVERY_TLS_CERT_FILE": str(certs.server.cert),
        "SERVICE_DISCOVERY_TLS_KEY_FILE": str(certs.server.key),
    }
    async with await ServerProcess.start(env=env) as process:
        assert process.rest_url.startswith("https://")
        url = f"{process.rest_url}/health"
        async with httpx.AsyncClient(verify=https_context(certs), timeout=5) as client:
            assert (await client.get(url)).status_code == 200
        health = await ctl("--server", process.grpc_target, "--ca", str(certs.ca), "health")
        assert (health.code, health.out.strip()) == (0, "SERVING")
        assert await process.stop() == 0


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"SERVICE_DISCOVERY_TLS_CERT_FILE": "s.crt"}, "SERVICE_DISCOVERY_TLS_KEY_FILE"),
        ({"SERVICE_DISCOVERY_TLS_KEY_FILE": "s.key"}, "SERVICE_DISCOVERY_TLS_CERT_FILE"),
        ({"SERVICE_DISCOVERY_TLS_CLIENT_CA_FILE": "c"}, "SERVICE_DISCOVERY_TLS_CLIENT_CA_FILE"),
    ],
)
def test_tls_settings_go_together(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env(env)
    assert refused.value.variable == variable


def test_tls_settings_also_come_from_flags(certs: Certificates) -> None:
    settings = parse_args(
        ["--tls-cert-file", str(certs.server.cert), "--tls-key-file", str(certs.server.key)], {}
    )
    assert settings.tls
    assert load_server_tls(settings) is not None
    assert load_server_tls(Settings()) is None
