"""The same through a real Envoy, when an `envoy` binary is on PATH (skipped otherwise).

Envoy takes its clusters (wildcard CDS) and endpoints (EDS) from this server over ADS and
routes HTTP on a static listener to cluster `web`; two HTTP backends answer with their ids.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2

# Loaded for the "@type"s of the bootstrap, which parsing it resolves.
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from google.protobuf import json_format

from discovery.testing import ServerProcess, eventually

ENVOY = shutil.which("envoy")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def http_backend(ident: str) -> tuple[asyncio.Server, int]:
    """A tiny HTTP/1.1 server answering every request with its id."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (await reader.readuntil(b"\r\n\r\n")) is not None:
                body = ident.encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
                    + f"content-length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def bootstrap(grpc_port: int, listen_port: int) -> dict[str, object]:
    http2 = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "web",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "web"}}],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    address = {"socket_address": {"address": "127.0.0.1", "port_value": grpc_port}}
    return {
        "node": {"id": "envoy-test", "cluster": "edge"},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "discovery"}}],
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "discovery",
                    "type": "STATIC",
                    "typed_extension_protocol_options": http2,
                    "load_assignment": {
                        "cluster_name": "discovery",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
                    },
                }
            ],
            "listeners": [
                {
                    "name": "ingress",
                    "address": {
                        "socket_address": {"address": "127.0.0.1", "port_value": listen_port}
                    },
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": manager,
                                }
                            ]
                        }
                    ],
                }
            ],
        },
    }


@pytest.fixture
async def backends() -> AsyncIterator[dict[str, int]]:
    servers = {ident: await http_backend(ident) for ident in ("w1", "w2")}
    yield {ident: port for ident, (_, port) in servers.items()}
    for server, _ in servers.values():
        server.close()


@pytest.mark.slow
@pytest.mark.skipif(
    ENVOY is None,
    reason="no envoy binary on PATH (optional: Debian, PyPI and npm ship none; see README)",
)
async def test_envoy_routes_to_healthy_instances(backends: dict[str, int], tmp_path: Path) -> None:
    assert ENVOY is not None
    async with await ServerProcess.start() as process, httpx.AsyncClient(timeout=5) as http:
        for ident, port in backends.items():
            body = {
                "service_name": "web",
                "instance_id": ident,
                "host": "127.0.0.1",
                "port": port,
                "health_endpoint": None,
            }
            reply = await http.post(f"{process.rest_url}/v1/discovery/register", json=body)
            assert reply.status_code in (200, 201), reply.text
        listen = free_port()
        config = tmp_path / "envoy.json"
        config.write_text(json.dumps(bootstrap(process.grpc_port, listen)))
        envoy = await asyncio.create_subprocess_exec(
            ENVOY,
            "-c",
            str(config),
            "--base-id",
            str(listen),
            "--disable-hot-restart",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:

            async def seen() -> set[str]:
                found = set()
                for _ in range(20):
                    try:
                        reply = await http.get(f"http://127.0.0.1:{listen}/")
                    except httpx.HTTPError:
                        continue
                    if reply.status_code == 200:
                        found.add(reply.text)
                return found

            async def reaches(expected: set[str]) -> bool:
                return await seen() == expected

            await eventually(lambda: reaches({"w1", "w2"}), within=30, every=0.2)
            reply = await http.delete(f"{process.rest_url}/v1/discovery/unregister/web/w2")
            assert reply.status_code == 200, reply.text
            await eventually(lambda: reaches({"w1"}), within=5, every=0.1)
        finally:
            envoy.kill()
            await envoy.wait()


def test_the_envoy_bootstrap_is_a_valid_bootstrap_message() -> None:
    """Runs without Envoy: the bootstrap above parses as Envoy's Bootstrap message."""
    parsed = json_format.ParseDict(bootstrap(50051, 8080), bootstrap_pb2.Bootstrap())
    assert parsed.dynamic_resources.cds_config.HasField("ads")
