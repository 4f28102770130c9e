"""The hot paths answer byte for byte as the FastAPI routes do, and leave the rest to them.

Two identical cores (same fake clock) serve the same app, one with the hot paths and one without.
Hypothesis sends both the same generated requests (bodies, content types, credentials, paths, and
changes to the registry in between); every answer must match (status, every header, body), and
the two registries must stay alike, so a hot heartbeat has exactly the route's effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from fastapi import FastAPI
from hypothesis import example, given, settings
from hypothesis import strategies as st

from discovery.core.facade import DiscoveryCore
from discovery.core.model import HealthStatus
from discovery.core.settings import Settings
from discovery.testing import FakeClock
from gateway_rest.app import DiscoveryApp, create_app
from gateway_rest.routing import WRITE
from gateway_rest.schemas import InstanceRecord
from tests.conftest import AUTH, SECRET, registration

HEARTBEAT = "/v1/discovery/heartbeat"
SERVICES = "/v1/discovery/services"
EXAMPLES = settings(max_examples=150, deadline=None, database=None)
Headers = list[tuple[bytes, bytes]]


def without_hot_paths(app: DiscoveryApp) -> DiscoveryApp:
    app.hot_paths = False
    return app


def asgi_client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def new_core() -> DiscoveryCore:
    return DiscoveryCore(
        Settings(secret=SECRET, store="memory"), FakeClock(wall=1_800_000_000.123456)
    )


@dataclass
class Twins:
    """Two identical cores, served with the hot paths (`hot`) and without them (`plain`)."""

    cores: tuple[DiscoveryCore, DiscoveryCore]
    hot: httpx.AsyncClient
    plain: httpx.AsyncClient

    async def send(self, method: str, url: str, **options: Any) -> httpx.Response:
        """Send to both, check both answered alike, and return the answer."""
        one = await self.hot.request(method, url, **options)
        other = await self.plain.request(method, url, **options)
        assert (one.status_code, one.content) == (other.status_code, other.content)
        assert one.headers.multi_items() == other.headers.multi_items()
        return one

    async def same_state(self) -> None:
        """Both registries hold the same records, as the route encodes them."""
        first, second = [
            {name: [InstanceRecord.of(i).model_dump() for i in listed] for name, listed in found}
            for found in (core.services().items() for core in self.cores)
        ]
        assert first == second

    def advance(self, seconds: float) -> None:
        for core in self.cores:
            assert isinstance(core.clock, FakeClock)
            core.clock.advance(seconds)

    def record_health(self, service: str, instance: str, status: HealthStatus) -> None:
        for core in self.cores:
            found = core.registry.get(service, instance)
            if found is not None:
                core.registry.record_health(found, status, 0.9)

    async def populate(self) -> None:
        bodies: list[dict[str, Any]] = [
            registration(instance="a", metadata={"zone": "eu-1", "ünï": 'cödé "quoted" \\ \n'}),
            registration(instance="b", health_endpoint="/health", port=1),
            registration(service="other", instance="x:1", host="::1"),
        ]
        for body in bodies:
            assert await self.send("POST", "/v1/discovery/register", json=body, headers=AUTH)
        for load in (0.1, 1e-7, 0.3333333333333333):
            beat = {"service_name": "game", "instance_id": "a", "load_percentage": load}
            await self.send("POST", HEARTBEAT, json=beat, headers=AUTH)
        self.record_health("game", "b", HealthStatus.UNHEALTHY)


@contextlib.contextmanager
def twins() -> Iterator[tuple[asyncio.Runner, Twins]]:
    """Twins on an event loop of their own, for Hypothesis to drive example after example."""
    with asyncio.Runner() as runner:
        cores = (new_core(), new_core())
        pair = Twins(
            cores,
            asgi_client(create_app(cores[0])),
            asgi_client(without_hot_paths(create_app(cores[1]))),
        )
        runner.run(pair.populate())
        try:
            yield runner, pair
        finally:
            runner.run(pair.hot.aclose())
            runner.run(pair.plain.aclose())


# -- generated requests ------------------------------------------------------------------------

SERVICE_NAMES = st.sampled_from(["game", "other", "nope", "-bad", "", "g" * 129]) | st.text(
    max_size=8
)
INSTANCE_IDS = st.sampled_from(["a", "b", "x:1", "nope", ""]) | st.text(max_size=8)
LOADS = st.one_of(
    st.floats(),
    st.integers(-2, 2),
    st.booleans(),
    st.sampled_from(["0.5", "x", None]),
    st.floats(0, 1),
)
HEARTBEAT_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "service_name": SERVICE_NAMES,
        "instance_id": INSTANCE_IDS,
        "load_percentage": LOADS,
        "extra": st.integers() | st.none(),
    },
)
# NaN and Infinity included: `json.dumps` writes them as JavaScript does, which is not JSON.
BODIES = st.one_of(
    HEARTBEAT_FIELDS.map(lambda fields: json.dumps(fields).encode()),
    HEARTBEAT_FIELDS.map(lambda fields: json.dumps(fields, indent=1, ensure_ascii=False).encode()),
    st.tuples(HEARTBEAT_FIELDS, st.integers(0, 60)).map(
        lambda cut: json.dumps(cut[0]).encode()[: cut[1]]
    ),
    st.sampled_from([b"[]", b"null", b"", b"{}", b'"x"', b"\xff\xfe{}"]),
    st.binary(max_size=40),
)
HEADER_BYTES = st.binary(max_size=30).filter(lambda value: not {13, 10, 0} & set(value))
CONTENT_TYPES = st.one_of(
    st.none(),
    st.sampled_from(
        [
            b"application/json",
            b"APPLICATION/JSON",
            b"application/json; charset=utf-8",
            b"application/json;charset=UTF-8",
            b"application/merge-patch+json; charset=utf-8",
            b" application/json ",
            b"application/json\xa0",
            b"text/plain",
            b"text/x+json",
            b"foo/bar+json",
            b"+json",
            b"application/json/x",
            b"",
        ]
    ),
    st.builds(
        lambda main, sub, params: b"%s/%s%s" % (main, sub, params),
        st.sampled_from([b"application", b"Application", b"text", b"", b" application"]),
        st.sampled_from([b"json", b"JSON", b"x+json", b"jsonx", b"json+x", b"", b"json "]),
        st.sampled_from([b"", b"; charset=utf-8", b";charset=latin-1", b'; q="a;b"', b" ;", b";"]),
    ),
    HEADER_BYTES,
)
CREDENTIALS = st.sampled_from(
    [f"Bearer {SECRET}".encode(), f"bearer {SECRET}".encode(), b"Bearer wrong", None, b""]
)


BEARER = f"Bearer {SECRET}".encode()
CREDENTIALS = st.sampled_from([BEARER, f"bearer {SECRET}".encode(), b"Bearer wrong", None, b""])


def headers(content_type: bytes | None, authorization: bytes | None) -> Headers:
    sent = [] if content_type is None else [(b"content-type", content_type)]
    return sent + ([] if authorization is None else [(b"authorization", authorization)])


def test_heartbeats_answer_as_the_route_does() -> None:
    with twins() as (runner, pair):

        @EXAMPLES
        @given(body=BODIES, content_type=CONTENT_TYPES, authorization=CREDENTIALS)
        @example(
            b'{"service_name": "game", "instance_id": "a", "load_percentage": 0.5}', None, BEARER
        )
        @example(b'{"service_name": "game", "instance_id": "a"}', b"application/json", BEARER)
        @example(b'{"service_name": "game", "instance_id": "nope"}', b"application/json", BEARER)
        @example(
            b'{"service_name": "game", "instance_id": "a", "load_percentage": NaN}',
            b"application/json",
            BEARER,
        )
        @example(b'{"service_name": "game", "instance_id": "a"}', b"text/plain", BEARER)
        @example(b'{"service_name": "game", "instance_id": "a"}', b"application/x+json", BEARER)
        def check(body: bytes, content_type: bytes | None, authorization: bytes | None) -> None:
            sent = headers(content_type, authorization)
            runner.run(pair.send("POST", HEARTBEAT, content=body, headers=sent))
            runner.run(pair.same_state())

        check()


SEGMENTS = st.sampled_from(["game", "other", "nope", "healthy", "", "gäme x", "x:1"]) | st.text(
    max_size=6
)
PATHS = st.builds(
    lambda segments, slash, query: "/".join([SERVICES, *map(_quoted, segments)]) + slash + query,
    st.lists(SEGMENTS, max_size=3),
    st.sampled_from(["", "/"]),
    st.sampled_from(["", "?service_name=other", "?x"]),
)
CHANGES = st.lists(
    st.one_of(
        st.tuples(st.just("register"), st.sampled_from(["game", "other", "new"]), INSTANCE_IDS),
        st.tuples(st.just("unregister"), st.sampled_from(["game", "other", "new"]), INSTANCE_IDS),
        st.tuples(st.just("beat"), st.sampled_from(["game", "other"]), INSTANCE_IDS),
        st.tuples(st.just("health"), st.sampled_from(["game", "other"]), INSTANCE_IDS),
        st.tuples(st.just("tick"), st.just(""), st.just("")),
    ),
    max_size=3,
)


def _quoted(segment: str) -> str:
    return quote(segment, safe="")


async def change(pair: Twins, what: str, service: str, instance: str) -> None:
    if what == "register":
        body = registration(service=service, instance=instance)
        await pair.send("POST", "/v1/discovery/register", json=body, headers=AUTH)
    elif what == "unregister":
        path = f"/v1/discovery/unregister/{_quoted(service)}/{_quoted(instance)}"
        await pair.send("DELETE", path, headers=AUTH)
    elif what == "beat":
        beat = {"service_name": service, "instance_id": instance, "load_percentage": 0.97}
        await pair.send("POST", HEARTBEAT, json=beat, headers=AUTH)
    elif what == "health":
        pair.record_health(service, instance, HealthStatus.HEALTHY)
    else:
        pair.advance(1.5)


def test_reads_answer_as_the_routes_do_through_every_change() -> None:
    with twins() as (runner, pair):

        @EXAMPLES
        @given(changes=CHANGES, path=PATHS)
        @example([], SERVICES + "/game/healthy")
        @example([("unregister", "game", "a"), ("unregister", "game", "b")], SERVICES + "/game")
        @example([("tick", "", ""), ("beat", "game", "a")], SERVICES)
        def check(changes: list[tuple[str, str, str]], path: str) -> None:
            for what, service, instance in changes:
                runner.run(change(pair, what, service, instance))
            first = runner.run(pair.send("GET", path))
            assert runner.run(pair.send("GET", path)).content == first.content  # cached now
            runner.run(pair.same_state())

        check()


async def test_a_hot_heartbeat_still_needs_the_secret() -> None:
    core = new_core()
    async with asgi_client(create_app(core)) as client:
        await client.post("/v1/discovery/register", json=registration(instance="a"), headers=AUTH)
        before = core.registry.require("game", "a").last_heartbeat
        assert isinstance(core.clock, FakeClock)
        core.clock.advance(1)
        response = await client.post(HEARTBEAT, json={"service_name": "game", "instance_id": "a"})
        assert response.status_code == 401
        assert core.registry.require("game", "a").last_heartbeat == before


async def test_a_write_route_added_to_the_app_is_guarded_and_documented() -> None:
    app = create_app(new_core())
    drained: list[str] = []

    async def drain(service_name: str) -> dict[str, str]:
        drained.append(service_name)
        return {"drained": service_name}

    async with asgi_client(app) as client:
        assert (await client.get(SERVICES)).status_code == 200  # the app has started already
        app.post("/v1/discovery/drain/{service_name}", openapi_extra=WRITE)(drain)
        refused = await client.post("/v1/discovery/drain/game", content=b"{not json")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        assert drained == []
        allowed = await client.post("/v1/discovery/drain/game", headers=AUTH)
        assert (allowed.status_code, allowed.json()) == (200, {"drained": "game"})
    assert drained == ["game"]
    operation = app.openapi()["paths"]["/v1/discovery/drain/{service_name}"]["post"]
    assert operation["security"] == [{"bearer": []}]


async def test_every_operation_documented_as_secured_refuses_a_request_without_the_secret() -> None:
    app = create_app(new_core())
    secured = [
        (method.upper(), path.replace("{service_name}", "game").replace("{instance_id}", "a"))
        for path, operations in app.openapi()["paths"].items()
        for method, operation in operations.items()
        if operation.get("security")
    ]
    assert len(secured) == 3
    async with asgi_client(app) as client:
        for method, path in secured:
            assert (await client.request(method, path)).status_code == 401, path
        open_read = await client.get(SERVICES)
        assert open_read.status_code == 200
