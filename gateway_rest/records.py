"""Instance records encoded once for each state they show, and listings spliced from them.

Building a record's model and encoding it costs about 12 us an instance, mostly pydantic's
`model_construct` and the ISO 8601 timestamps. A read after a change used to pay it for every
instance, though a change (a registration, a heartbeat, a probe) touches one: a service of 1,000
instances with heartbeats coming in was about 11 ms a read, `GET /services` over 10,000 about
100 ms. `EncodedRecords` keeps each instance's encoded record with the fields it was made from,
and encodes it again only when one of them differs; a listing is the response model encoded
with empty lists, the kept records spliced into them. So the model stays the one definition of
the shape (and of the OpenAPI schema), and `tests/test_rest_records.py` checks every listing
against the model encoded whole.
"""

from __future__ import annotations

from pydantic import BaseModel
from starlette.responses import Response

from discovery.core.model import Instance
from gateway_rest.schemas import InstanceRecord, ServicesResponse

#: Encoded records kept (about 0.6 KB each: 11.7 MB when full); past this the oldest go first.
SIZE = 20_000


class JSONBytes(Response):
    """An answer already encoded as JSON (headers as a `JSONResponse` sends them)."""

    media_type = "application/json"


class EncodedRecords:
    """The encoded record of each instance read lately (see the module docstring)."""

    def __init__(self, size: int = SIZE) -> None:
        self._size = size
        # Instance (by identity) -> (the fields its record was made from, the record encoded).
        self._kept: dict[Instance, tuple[tuple[object, ...], bytes]] = {}

    def __len__(self) -> int:
        return len(self._kept)

    def record(self, instance: Instance) -> bytes:
        """`instance`'s record, encoded as the model encodes it."""
        shown = _shown(instance)
        kept = self._kept.get(instance)
        if kept is not None and kept[0] == shown:
            return kept[1]
        encoded = encode(InstanceRecord.of(instance))
        if kept is None and len(self._kept) >= self._size:
            del self._kept[next(iter(self._kept))]
        self._kept[instance] = (shown, encoded)
        return encoded

    def listing(self, envelope: BaseModel, instances: list[Instance]) -> bytes:
        """`envelope` encoded with `instances` as the records of its last field, which it holds
        as an empty list."""
        empty = encode(envelope)
        if not empty.endswith(b"[]}"):
            raise ValueError(f"{type(envelope).__name__} does not end with an empty list")
        return b"%s%s]}" % (empty[:-2], b",".join(map(self.record, instances)))

    def services(self, services: dict[str, list[Instance]]) -> bytes:
        """`ServicesResponse` encoded for `services` (name -> instances, in order)."""
        envelope = ServicesResponse(services={name: [] for name in services})
        parts = encode(envelope).split(b"[]")
        if len(parts) != len(services) + 1:
            # A name holding "[]" (registration refuses those, but a store could hold one):
            # the whole model, encoded as it is.
            records = {
                name: [InstanceRecord.of(i) for i in listed] for name, listed in services.items()
            }
            return encode(ServicesResponse(services=records))
        spliced = [parts[0]]
        for instances, after in zip(services.values(), parts[1:], strict=True):
            spliced += (b"[", b",".join(map(self.record, instances)), b"]", after)
        return b"".join(spliced)


def _shown(instance: Instance) -> tuple[object, ...]:
    """Every field of `instance` that its record shows."""
    return (
        instance.service_name,
        instance.instance_id,
        instance.host,
        instance.port,
        instance.health_endpoint,
        instance.status,
        instance.load_percentage,
        instance.critical_load,
        instance.metadata,
        instance.registered_at,
        instance.last_heartbeat,
        instance.last_health_check,
    )


def encode(model: BaseModel) -> bytes:
    """`model` as JSON, as the routes' responses encode it."""
    return model.__pydantic_serializer__.to_json(model)
