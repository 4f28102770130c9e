"""The write secret over REST: who may write, what a refusal looks like, and when it comes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.conftest import AUTH, SECRET, ServerFactory, registration

WRITES = [
    ("POST", "/v1/discovery/register"),
    ("POST", "/v1/discovery/heartbeat"),
    ("DELETE", "/v1/discovery/unregister/game/game-1"),
]
MISSING = {"detail": "Missing Authorization header"}
FORMAT = {"detail": "Invalid Authorization header format"}
INVALID = {"detail": "Invalid service discovery secret"}


@pytest.mark.parametrize(("method", "path"), WRITES)
@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, MISSING),
        ({"Authorization": ""}, MISSING),
        ({"Authorization": SECRET}, FORMAT),
        ({"Authorization": f"Basic {SECRET}"}, FORMAT),
        ({"Authorization": "Bearer"}, FORMAT),
        ({"Authorization": "Token abc def"}, FORMAT),
        ({"Authorization": "Bearer wrong"}, INVALID),
        ({"Authorization": f"Bearer {SECRET}x"}, INVALID),
        ({"Authorization": f"Bearer {SECRET[:-1]}"}, INVALID),
    ],
)
async def test_writes_without_valid_credentials_get_401(
    rest: httpx.AsyncClient,
    method: str,
    path: str,
    headers: dict[str, str],
    expected: dict[str, str],
) -> None:
    response = await rest.request(method, path, content=b"{not json", headers=headers)
    assert response.status_code == 401
    assert response.json() == expected
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
async def test_the_scheme_word_is_case_insensitive(rest: httpx.AsyncClient, scheme: str) -> None:
    response = await rest.post(
        "/v1/discovery/register",
        json=registration(),
        headers={"Authorization": f"{scheme} {SECRET}"},
    )
    assert response.status_code == 200


async def test_401_comes_before_any_body_parsing(rest: httpx.AsyncClient) -> None:
    for body in (b"{not json", b"[]", b'{"port": "x"}', b""):
        response = await rest.post(
            "/v1/discovery/register", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 401, body


async def test_an_oversized_body_may_get_413_first(rest: httpx.AsyncClient) -> None:
    response = await rest.post("/v1/discovery/register", content=b"x" * (64 * 1024 + 1))
    assert response.status_code == 413
    assert "detail" in response.json()


async def test_an_oversized_chunked_body_gets_413(rest: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(80):
            yield b"x" * 1024

    response = await rest.post("/v1/discovery/register", content=chunks(), headers=AUTH)
    assert response.status_code == 413


async def test_malformed_json_with_credentials_is_422(rest: httpx.AsyncClient) -> None:
    response = await rest.post(
        "/v1/discovery/register",
        content=b"{not json",
        headers={**AUTH, "content-type": "application/json"},
    )
    assert response.status_code == 422
    assert "detail" in response.json()


async def test_reads_are_open(rest: httpx.AsyncClient) -> None:
    for path in (
        "/v1/discovery/services",
        "/v1/discovery/services/x/healthy",
        "/v1/discovery/alerts",
        "/health",
    ):
        assert (await rest.get(path)).status_code == 200


async def test_a_refused_write_changes_nothing(rest: httpx.AsyncClient) -> None:
    await rest.post("/v1/discovery/register", json=registration(), headers=AUTH)
    before = (await rest.get("/v1/discovery/services")).json()
    bad = {"Authorization": "Bearer wrong"}
    await rest.post("/v1/discovery/register", json=registration(port=1), headers=bad)
    await rest.delete("/v1/discovery/unregister/game/game-1", headers=bad)
    await rest.post(
        "/v1/discovery/heartbeat",
        json={"service_name": "game", "instance_id": "game-1", "load_percentage": 1},
        headers=bad,
    )
    assert (await rest.get("/v1/discovery/services")).json() == before


async def test_without_a_secret_writes_are_open_and_a_warning_says_so(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        async with (
            make_server(secret=None) as server,
            httpx.AsyncClient(base_url=server.rest_url) as rest,
        ):
            response = await rest.post("/v1/discovery/register", json=registration())
            assert response.status_code == 200
            response = await rest.delete("/v1/discovery/unregister/game/game-1")
            assert response.status_code == 200
    warnings = [r for r in caplog.records if "SERVICE_DISCOVERY_SECRET" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
