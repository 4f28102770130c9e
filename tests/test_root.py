"""`GET /`: the legacy greeting, and browsers sent to the dashboard."""

from __future__ import annotations

import httpx
import pytest

from gateway_rest.root import prefers_html

GREETING = '{"message":"Service Discovery is running 🔍"}'.encode()
FIREFOX = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"
CHROME = (
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
)


@pytest.mark.parametrize("accept", [None, "*/*", "application/json", "application/json, */*"])
async def test_programs_get_the_legacy_greeting_byte_for_byte(
    rest: httpx.AsyncClient, accept: str | None
) -> None:
    headers = {} if accept is None else {"Accept": accept}
    request = rest.build_request("GET", "/", headers=headers)
    if accept is None:
        del request.headers["Accept"]
    response = await rest.send(request)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == GREETING


@pytest.mark.parametrize("accept", [FIREFOX, CHROME, "text/html"])
async def test_browsers_are_redirected_to_the_dashboard(
    rest: httpx.AsyncClient, accept: str
) -> None:
    response = await rest.get("/", headers={"Accept": accept})
    assert response.status_code == 307
    assert response.headers["location"] == "/ui/"


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        (FIREFOX, True),
        ("text/*", True),
        ("TEXT/HTML; q=1", True),
        ("*/*", False),
        ("", False),
        ("text/html;q=0", False),
        ("text/html;q=0.5, application/json", False),
        ("application/json;q=0.4, text/html;q=0.5", True),
        ("text/html;q=0.8, application/*;q=0.8", False),
        ("text/html;q=oops", False),
        ("text/html;q=2", False),
        ("text/*;q=0.2, text/html;q=0.9, */*;q=0.5", True),
        ("text/html;q=0.3, text/*;q=0.9, */*;q=0.5", False),
        ("garbage, ,;;", False),
    ],
)
def test_html_is_preferred_only_by_a_higher_quality(accept: str, html: bool) -> None:
    assert prefers_html(accept) is html
