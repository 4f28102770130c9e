"""`GET /v1/discovery/watch`: the Watch stream as Server-Sent Events.

Each SSE event's `data:` is one JSON object: `{"type": "PUT" | "DELETE", "revision": n,
"instance": {record}}` for an instance, `{"type": "RESET" | "SYNCED" | "PROGRESS", "revision": n}`
for the markers. Only SYNCED, PROGRESS and live events carry `id:` (the revision): a browser
EventSource cut off mid-snapshot reconnects without `Last-Event-ID` and starts over, and one cut
off later resumes from the last revision it saw.

Like the gRPC stream, an event is encoded once (cached on the shared `WatchEvent`) whatever the
number of streams carrying it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse
from pydantic import AfterValidator, Field

from discovery.core import validation
from discovery.core.errors import InvalidArgument, ShuttingDown
from discovery.core.facade import DiscoveryCore
from discovery.core.metrics import SSE
from discovery.core.watch.hub import WatchBatch, WatchEvent, WatchSelector
from gateway_rest.routers import Core
from gateway_rest.schemas import InstanceRecord

router = APIRouter(prefix="/v1/discovery", tags=["watch"])

_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _service_names(names: list[str]) -> list[str]:
    for name in names:
        try:
            validation.check_service_name(name, "service")
        except InvalidArgument as exc:
            raise ValueError(exc.reason) from None
    return names


# The pattern is published in the OpenAPI schema only; the core's check is the one applied.
_ServiceName = Annotated[
    str,
    Field(json_schema_extra={"pattern": validation.SERVICE_NAME_PATTERN, "maxLength": 128}),
]
ServiceNames = Annotated[
    list[_ServiceName],
    Query(description="A service name; repeat for several; none means all."),
    AfterValidator(_service_names),
]


# Not in the OpenAPI schema: the stream never ends by itself, which tools that call every
# documented endpoint (schema fuzzers) cannot cope with. The README documents it.
@router.get("/watch", include_in_schema=False)
async def watch(
    core: Core,
    service: ServiceNames = [],  # noqa: B006  # FastAPI copies defaults per request
    healthy_only: bool = False,
    start_revision: Annotated[int, Query(ge=0)] = 0,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """Follow instances as Server-Sent Events: a snapshot, then every change."""
    core.check_serving()  # 503 once shutdown has begun
    resume = _revision(last_event_id)
    selector = WatchSelector(
        frozenset(service), healthy_only, resume if resume is not None else start_revision
    )
    return StreamingResponse(
        _stream(core, selector), media_type="text/event-stream", headers=_HEADERS
    )


def _revision(last_event_id: str | None) -> int | None:
    """The revision an EventSource resumes from; an unusable header means no resume point."""
    if last_event_id is None:
        return None
    text = last_event_id.strip()
    return int(text) if text.isascii() and text.isdigit() else None


async def _stream(core: DiscoveryCore, selector: WatchSelector) -> AsyncIterator[bytes]:
    # Subscribing here rather than in the route: the generator's finally is then sure to run.
    try:
        watcher = core.watch(selector, SSE)
    except ShuttingDown:
        return
    try:
        async for batch in watcher:
            yield encode_batch(batch)
    finally:
        watcher.close()


def _data(event: WatchEvent) -> bytes:
    record = InstanceRecord.of(event.instance).model_dump_json().encode()
    return b'{"type":"%s","revision":%d,"instance":%s}' % (
        event.type.value.encode(),
        event.revision,
        record,
    )


def _unnumbered(event: WatchEvent) -> bytes:
    return b"data: " + event.encoded(_data) + b"\n\n"


def _numbered(event: WatchEvent) -> bytes:
    return b"id: %d\ndata: %s\n\n" % (event.revision, event.encoded(_data))


def _marker(kind: bytes, revision: int, numbered: bool) -> bytes:
    data = b'data: {"type":"%s","revision":%d}\n\n' % (kind, revision)
    return b"id: %d\n%s" % (revision, data) if numbered else data


def encode_batch(batch: WatchBatch) -> bytes:
    """The SSE text of one watch message (encoded once for every stream that sends it)."""
    return batch.encoded(_encode)


def _encode(batch: WatchBatch) -> bytes:
    if batch.snapshot:
        parts = [_marker(b"RESET", batch.revision, numbered=False)] if batch.reset else []
        parts.extend(event.encoded(_unnumbered) for event in batch.events)
        if batch.synced:
            parts.append(_marker(b"SYNCED", batch.revision, numbered=True))
        return b"".join(parts)
    if not batch.events:
        return _marker(b"PROGRESS", batch.revision, numbered=True)
    return b"".join(event.encoded(_numbered) for event in batch.events)
