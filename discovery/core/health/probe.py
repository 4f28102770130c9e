"""One health probe: the verdict on an answer, and the HTTP prober that gets the answer.

`verdict()` is pure: it turns a status code and the first bytes of a body into a `ProbeResult`
(pass or fail, and the load the instance reported). `HttpProber` sends the GET with one shared
httpx client; the health monitor sees it only through the `Prober` protocol, so its tests can
swap in a fake.
"""

from __future__ import annotations

import asyncio
import codecs
import http.cookiejar
import json
import math
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import httpx

from discovery.core.health.transport import SpreadTransport

#: At most this much of a probe's body is read; the rest is never downloaded.
MAX_BODY = 64 * 1024

#: JSON `status` values (compared case-insensitively) that fail a probe despite a 2xx.
FAILING_STATUSES = frozenset({"unhealthy", "down", "fail", "failed", "critical", "error"})

LOAD_FIELD = "load_percentage"


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """Where to probe: `GET http://{host}:{port}{path}`."""

    host: str
    port: int
    path: str

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.path}"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The outcome of one probe.

    `load` is the reported load when the probe passed and the body carried a valid one;
    `bad_load` describes a load that was present but unusable (it is left out, not guessed).
    """

    passed: bool
    reason: str
    load: float | None = None
    bad_load: str | None = None
    timed_out: bool = False

    @classmethod
    def failure(cls, reason: str) -> ProbeResult:
        return cls(False, reason)

    @classmethod
    def timeout(cls, reason: str) -> ProbeResult:
        """A failure because no whole answer came within the time allowed."""
        return cls(False, reason, timed_out=True)


class Prober(Protocol):
    """Sends one probe and never raises for what the instance does: every outcome is a result."""

    async def probe(self, target: ProbeTarget) -> ProbeResult:
        """Probe `target`, within the probe timeout."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def verdict(status_code: int, body: bytes) -> ProbeResult:
    """Judge an answer: 2xx passes unless its JSON `status` says otherwise; load from a pass."""
    if not 200 <= status_code <= 299:
        return ProbeResult.failure(f"HTTP {status_code}")
    document = _json_object(body)
    if document is None:
        return ProbeResult(True, f"HTTP {status_code}")
    status = document.get("status")
    if isinstance(status, str) and status.strip().lower() in FAILING_STATUSES:
        return ProbeResult.failure(f"HTTP {status_code}, status {status!r}")
    if LOAD_FIELD not in document:
        return ProbeResult(True, f"HTTP {status_code}")
    load, bad_load = parse_load(document[LOAD_FIELD])
    return ProbeResult(True, f"HTTP {status_code}", load, bad_load)


def parse_load(value: Any) -> tuple[float | None, str | None]:
    """`(load, None)` for a finite number in 0..1, else `(None, why not)`."""
    # bool is an int subclass, but `true` is not a load.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None, f"not a number: {_short(value)}"
    load = float(value) if isinstance(value, float) or abs(value) <= 1 else math.inf
    if not math.isfinite(load) or not 0.0 <= load <= 1.0:
        return None, f"not a finite number in 0..1: {_short(value)}"
    return load, None


def _json_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None for anything else (plain text, a list, a cut body)."""
    if not body.removeprefix(codecs.BOM_UTF8).lstrip().startswith(b"{"):
        return None
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _NoCookies(http.cookiejar.CookieJar):
    """Keeps no cookie: instances that share a host must not see each other's."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        pass


class HttpProber:
    """Probes over one shared `httpx.AsyncClient`, so connections to an instance are reused.

    The whole probe (connect, headers and body) must finish within `timeout`: httpx's own
    timeouts bound each read, so a server dripping one byte at a time would otherwise hold a
    concurrency slot for ever. `max_connections` should be the most probes ever in flight.
    """

    def __init__(self, timeout: float, max_connections: int) -> None:
        self._timeout = timeout
        self._client = httpx.AsyncClient(
            transport=SpreadTransport(max_connections),
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            # Probes go straight to the instance: never through a proxy from the environment.
            trust_env=False,
            cookies=_NoCookies(),
            # Identity: the 64 KiB cap is on bytes read, so no compressed body can expand past it.
            headers={"Accept-Encoding": "identity", "User-Agent": "service-discovery-probe"},
        )

    async def probe(self, target: ProbeTarget) -> ProbeResult:
        try:
            async with asyncio.timeout(self._timeout):
                return await self._get(target.url)
        except (TimeoutError, httpx.TimeoutException):
            return ProbeResult.timeout(f"timed out after {self._timeout}s")
        except httpx.HTTPError as exc:
            return ProbeResult.failure(f"{type(exc).__name__}: {exc}".rstrip(": "))
        except OSError as exc:
            return ProbeResult.failure(f"connection error: {exc}")
        except httpx.InvalidURL as exc:  # not an HTTPError; the path or host did not make a URL
            return ProbeResult.failure(f"invalid URL: {exc}")

    async def _get(self, url: str) -> ProbeResult:
        async with self._client.stream("GET", url) as response:
            body = bytearray()
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) >= MAX_BODY:
                    # Leaving the block unread closes the connection instead of draining it.
                    del body[MAX_BODY:]
                    break
            return verdict(response.status_code, bytes(body))

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> HttpProber:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
