"""The alert webhook: every raise and clear POSTed as JSON to `ALERT_WEBHOOK_URL`.

The sink is called synchronously from the registry's change path, so it only appends to a
bounded queue; a background task drains the queue, retrying with exponential backoff. A slow or
dead webhook therefore never slows the monitor or the API: when the queue is full the oldest
notification is dropped (and logged), and memory stays bounded.

Payload: `{"event": "alert.raised" | "alert.cleared", "service_name", "instance_id",
"load_percentage", "threshold", "since", "at"}`, times in ISO 8601 UTC with an offset.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

import httpx

from discovery.core.clock import iso8601
from discovery.core.health.alerts import AlertEvent
from discovery.core.model import Alert

log = logging.getLogger("discovery.webhook")

#: Statuses worth another try: the receiver is overloaded or briefly down.
_RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})


def alert_payload(event: AlertEvent, alert: Alert, at: float) -> dict[str, Any]:
    """The JSON body of one notification."""
    return {
        "event": event,
        "service_name": alert.service_name,
        "instance_id": alert.instance_id,
        "load_percentage": alert.load_percentage,
        "threshold": alert.threshold,
        "since": iso8601(alert.since),
        "at": iso8601(at),
    }


class WebhookSink:
    """An `AlertBook` sink that delivers notifications in order from a bounded queue.

    Each notification gets up to `attempts` tries, `timeout` seconds each, waiting `backoff`,
    then twice as long each time (at most `max_backoff`) between tries.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        queue_size: int = 1000,
        attempts: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url
        self._timeout = timeout
        self._queue: deque[dict[str, Any]] = deque()
        self._queue_size = queue_size
        self._attempts = attempts
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._transport = transport
        self._ready = asyncio.Event()
        self._dropping = 0
        self.delivered = 0
        self.dropped = 0
        self.failed = 0

    def __len__(self) -> int:
        return len(self._queue)

    def pending(self) -> list[dict[str, Any]]:
        """The notifications waiting for delivery, oldest first."""
        return list(self._queue)

    def __call__(self, event: AlertEvent, alert: Alert, at: float) -> None:
        """Queue one notification; never blocks."""
        if len(self._queue) >= self._queue_size:
            self._queue.popleft()
            self.dropped += 1
            self._dropping += 1
            if self._dropping == 1:
                log.warning(
                    "Alert webhook queue full (%d): dropping the oldest notifications",
                    self._queue_size,
                )
        self._queue.append(alert_payload(event, alert, at))
        self._ready.set()

    async def run(self) -> None:
        """Deliver queued notifications until cancelled."""
        client = httpx.AsyncClient(
            timeout=self._timeout, follow_redirects=False, transport=self._transport
        )
        try:
            while True:
                await self._next()
                await self._deliver(client, self._queue.popleft())
        finally:
            await client.aclose()
            if self._queue:
                log.warning("%d alert notifications were not delivered", len(self._queue))

    async def _next(self) -> None:
        if not self._queue:
            if self._dropping:
                log.warning("Alert webhook dropped %d notifications", self._dropping)
                self._dropping = 0
            self._ready.clear()
            await self._ready.wait()

    async def _deliver(self, client: httpx.AsyncClient, payload: dict[str, Any]) -> None:
        reason = ""
        for attempt in range(self._attempts):
            if attempt:
                await asyncio.sleep(min(self._max_backoff, self._backoff * 2 ** (attempt - 1)))
            try:
                async with asyncio.timeout(self._timeout):
                    response = await client.post(self.url, json=payload)
            except (TimeoutError, httpx.TimeoutException):
                reason = f"timed out after {self._timeout}s"
                continue
            except (httpx.HTTPError, OSError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
                continue
            if response.is_success:
                self.delivered += 1
                return
            reason = f"HTTP {response.status_code}"
            if response.status_code not in _RETRYABLE:
                break
        self.failed += 1
        log.warning(
            "Alert webhook %s for %s:%s not delivered (%s)",
            payload["event"],
            payload["service_name"],
            payload["instance_id"],
            reason,
        )
