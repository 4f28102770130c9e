"""The dashboard at /ui/ in a real browser (Debian's chromium driven by Playwright) against the
server process: it follows registration, a failed probe, an alert raised and cleared, and an
unregistration, each within a second of the server knowing; it stays inside a phone's width and
writes hostile data as text. Screenshots land in test-artifacts/dashboard/ (git-ignored)."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright

from discovery.testing import ServerProcess, run_server
from tests.conftest import AUTH, SECRET, registration
from tests.instances import FakeInstances, fake_instances

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "dashboard"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HOSTILE = '<img src=x onerror="window.__pwned = 1">'


@pytest.fixture
async def server() -> AsyncIterator[ServerProcess]:
    env = {
        "SERVICE_DISCOVERY_STORE": "memory",
        "SERVICE_DISCOVERY_SECRET": SECRET,
        "HEALTH_CHECK_INTERVAL_SECONDS": "0.2",
        "HEALTH_CHECK_TIMEOUT_SECONDS": "1",
    }
    async with await ServerProcess.start(env=env) as process:
        yield process
        assert await process.stop() == 0


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    assert os.access(CHROMIUM, os.X_OK), f"no {CHROMIUM}: `make chromium` installs it"
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def fleet() -> AsyncIterator[FakeInstances]:
    async with fake_instances() as instances:
        instances.answer("/health", 200, {"status": "UP", "load_percentage": 0.2})
        yield instances


class ScriptErrors(list[str]):
    """The script errors a page threw, kept by its `pageerror` listener."""

    def __init__(self, page: Page) -> None:
        super().__init__()
        page.on("pageerror", lambda error: self.append(str(error)))


async def open_dashboard(
    browser: Browser, url: str, width: int, height: int
) -> tuple[Page, ScriptErrors]:
    """A page of `width` x `height` showing the dashboard once its stream is live, and the
    errors its script throws."""
    page = await browser.new_page(viewport={"width": width, "height": height})
    errors = ScriptErrors(page)
    await page.goto(f"{url}/ui/")
    await page.wait_for_selector('#connection[data-state="live"]', timeout=10_000)
    return page, errors


async def row(page: Page, name: str) -> dict[str, str] | None:
    """The data-* attributes of the row of instance `name` (SERVICE/ID), None when absent."""
    found: dict[str, str] | None = await page.evaluate(
        """(name) => {
            const row = [...document.querySelectorAll("[data-instance]")]
                .find((r) => r.dataset.instance === name);
            return row ? {status: row.dataset.status, critical: row.dataset.critical} : null;
        }""",
        name,
    )
    return found


async def follows(
    page_shows: Callable[[], Awaitable[bool]],
    server_has: Callable[[], Awaitable[bool]],
    within: float = 20.0,
) -> float:
    """Wait until the page shows a change; returns how long after the server first showed it
    over REST the page did (negative when the page was first: the SSE push beats REST polls)."""
    server_at: float | None = None
    page_at: float | None = None
    deadline = time.monotonic() + within
    while page_at is None:
        assert time.monotonic() < deadline, "the page did not follow within the time allowed"
        if server_at is None and await server_has():
            server_at = time.monotonic()
        if await page_shows():
            page_at = time.monotonic()
    if server_at is None:
        assert await server_has(), "the page shows a state the server does not have"
        return 0.0
    return page_at - server_at


async def record(client: httpx.AsyncClient, instance: str) -> dict[str, Any] | None:
    response = await client.get("/v1/discovery/services/game")
    if response.status_code == 404:
        return None
    return next((r for r in response.json()["instances"] if r["instance_id"] == instance), None)


def screenshot_path(name: str) -> str:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return str(ARTIFACTS / f"{name}.png")


async def test_the_page_follows_every_change_within_a_second(
    server: ServerProcess, browser: Browser, fleet: FakeInstances
) -> None:
    page, errors = await open_dashboard(browser, server.rest_url, 1280, 800)
    async with httpx.AsyncClient(base_url=server.rest_url, timeout=5) as client:

        async def has(status: str | None, critical: bool = False) -> bool:
            found = await record(client, "game-1")
            if status is None:
                return found is None
            return found is not None and (found["status"], found["critical_load"]) == (
                status,
                critical,
            )

        def shows(status: str | None, critical: bool = False) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                found = await row(page, "game/game-1")
                if status is None:
                    return found is None
                return found == {"status": status, "critical": str(critical).lower()}

            return check

        body = registration(
            instance="game-1", port=fleet.port, health_endpoint="/health", metadata={"v": "1"}
        )
        assert (await client.post("/v1/discovery/register", json=body, headers=AUTH)).is_success
        assert await follows(shows("healthy"), lambda: has("healthy")) <= 1.0
        await page.screenshot(path=screenshot_path("laptop-healthy"), full_page=True)

        fleet.answer("/health", 503, {"status": "DOWN"})
        assert await follows(shows("unhealthy"), lambda: has("unhealthy")) <= 1.0

        fleet.answer("/health", 200, {"status": "UP", "load_percentage": 0.95})
        assert await follows(shows("healthy", True), lambda: has("healthy", True)) <= 1.0
        alert = page.locator('[data-alert="game/game-1"]')
        await alert.wait_for(timeout=1_000)
        assert "95%" in await alert.inner_text()
        assert await page.locator("#count-alerts").inner_text() == "1"
        await page.screenshot(path=screenshot_path("laptop-alert"), full_page=True)

        fleet.answer("/health", 200, {"status": "UP", "load_percentage": 0.1})
        assert await follows(shows("healthy", False), lambda: has("healthy", False)) <= 1.0
        await alert.wait_for(state="detached", timeout=1_000)

        deleted = await client.delete("/v1/discovery/unregister/game/game-1", headers=AUTH)
        assert deleted.is_success
        assert await follows(shows(None), lambda: has(None)) <= 1.0
        assert await page.locator("#services-empty").is_visible()
    assert errors == []


async def seed(client: httpx.AsyncClient, fleet: FakeInstances) -> None:
    """A few services, one of them unhealthy, one at critical load, one with hostile data."""
    checkout = {"port": fleet.port, "metadata": {"version": "2.14.1", "zone": "eu-west-1a"}}
    bodies = [
        registration("checkout", "checkout-eu-west-1a-7f9c", health_endpoint="/health", **checkout),
        registration(
            "checkout", "checkout-eu-west-1b-2d41", health_endpoint="/missing", **checkout
        ),
        registration("game", "game-1", host="2001:db8::7", metadata={"note": HOSTILE}),
        registration(
            "a-service-with-a-long-name-that-must-wrap-on-phones",
            "an-instance-id-that-is-just-as-long-and-has-no-spaces-at-all",
            port=9,
            metadata={"k" * 40: "v" * 120},
        ),
    ]
    for body in bodies:
        assert (await client.post("/v1/discovery/register", json=body, headers=AUTH)).is_success
    beat = {"service_name": "game", "instance_id": "game-1", "load_percentage": 0.9}
    assert (await client.post("/v1/discovery/heartbeat", json=beat, headers=AUTH)).is_success


async def test_readable_on_a_phone_and_data_stays_text(
    server: ServerProcess, browser: Browser, fleet: FakeInstances
) -> None:
    async with httpx.AsyncClient(base_url=server.rest_url, timeout=5) as client:
        await seed(client, fleet)
    for name, width, height in (("phone", 375, 740), ("laptop", 1280, 800)):
        page, errors = await open_dashboard(browser, server.rest_url, width, height)
        await page.wait_for_selector('[data-instance="game/game-1"][data-critical="true"]')
        await page.wait_for_selector(
            '[data-instance="checkout/checkout-eu-west-1b-2d41"][data-status="unhealthy"]'
        )
        await page.wait_for_selector('[data-alert="game/game-1"]')
        overflow = await page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        await page.screenshot(path=screenshot_path(f"{name}-fleet"), full_page=True)
        await page.emulate_media(color_scheme="dark")
        await page.screenshot(path=screenshot_path(f"{name}-fleet-dark"), full_page=True)
        assert overflow <= 0, f"{overflow}px of horizontal overflow at {width}px"
        assert await page.evaluate("() => window.__pwned") is None
        assert await page.locator("img").count() == 0
        assert HOSTILE in await page.locator('[data-instance="game/game-1"]').inner_text()
        assert errors == []
        await page.close()


async def test_the_page_resumes_after_a_server_restart(
    browser: Browser, fleet: FakeInstances, tmp_path: Path
) -> None:
    env = {
        "SERVICE_DISCOVERY_STORE": f"sqlite:{tmp_path / 'registry.db'}",
        "SERVICE_DISCOVERY_SECRET": SECRET,
    }
    async with await ServerProcess.start(env=env) as first:
        page, errors = await open_dashboard(browser, first.rest_url, 1024, 700)
        ports = {
            "SERVICE_DISCOVERY_PORT": str(first.rest_port),
            "SERVICE_DISCOVERY_GRPC_PORT": str(first.grpc_port),
        }
        assert await first.stop() == 0
    await page.wait_for_selector('#connection:not([data-state="live"])', timeout=10_000)
    async with await ServerProcess.start(env={**env, **ports}) as second:
        async with httpx.AsyncClient(base_url=second.rest_url, timeout=5) as client:
            body = registration(instance="late", health_endpoint=None)
            assert (await client.post("/v1/discovery/register", json=body, headers=AUTH)).is_success
        await page.wait_for_selector('[data-instance="game/late"]', timeout=15_000)
        assert errors == []
        assert await second.stop() == 0


async def test_the_page_and_its_files_are_served_by_the_app() -> None:
    async with (
        run_server() as server,
        httpx.AsyncClient(base_url=server.rest_url, timeout=5) as client,
    ):
        bare = await client.get("/ui")
        assert bare.status_code in (301, 307, 308)
        assert bare.headers["location"] == "/ui/"
        page = await client.get("/ui/")
        assert page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert '<script src="app.js"' in page.text
        assert "http" not in page.text.replace("http-equiv", "")  # nothing from elsewhere
        script = await client.get("/ui/app.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert "innerHTML" not in script.text
        assert "EventSource" in script.text
        assert (await client.get("/ui/style.css")).headers["content-type"].startswith("text/css")
        assert (await client.get("/ui/nothing.js")).status_code == 404
