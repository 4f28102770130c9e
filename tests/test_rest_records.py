"""Listings spliced from kept records read exactly as the response models encoded whole.

Hypothesis drives a registry through registrations, heartbeats, probe outcomes, time passing and
unregistrations; after each step the kept-record listings of every service (and of names no
service has), and the listing of all services, must be byte for byte the model's own encoding, so
a record kept past a change of what it shows would be caught.
"""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from discovery.core.errors import ServiceNotFound
from discovery.core.facade import DiscoveryCore
from discovery.core.model import HealthStatus, Instance, Registration
from discovery.core.settings import Settings
from discovery.testing import FakeClock
from gateway_rest.records import EncodedRecords
from gateway_rest.schemas import (
    HealthyResponse,
    InstanceRecord,
    ServiceResponse,
    ServicesResponse,
)

SERVICES = ["game", "chat"]
INSTANCES = ["a", "b", "c:1"]
STEPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("register"),
            st.sampled_from(SERVICES),
            st.sampled_from(INSTANCES),
            st.sampled_from(["10.0.0.5", "::1", "web.example"]),
            st.integers(1, 3),
            st.sampled_from([None, "/health"]),
            st.sampled_from([{}, {"zone": "eu-1"}, {"ünï": 'cödé "q" \\ \n'}]),
        ),
        st.tuples(
            st.just("beat"),
            st.sampled_from(SERVICES),
            st.sampled_from(INSTANCES),
            st.one_of(st.none(), st.floats(0, 1)),
        ),
        st.tuples(
            st.just("health"),
            st.sampled_from(SERVICES),
            st.sampled_from(INSTANCES),
            st.sampled_from(list(HealthStatus)),
            st.floats(0, 1),
        ),
        st.tuples(st.just("tick"), st.floats(0.001, 400)),
        st.tuples(st.just("unregister"), st.sampled_from(SERVICES), st.sampled_from(INSTANCES)),
    ),
    max_size=25,
)


def new_core() -> DiscoveryCore:
    return DiscoveryCore(Settings(store="memory"), FakeClock(wall=1_800_000_000.123456))


async def step(core: DiscoveryCore, change: tuple[object, ...]) -> None:
    what, *args = change
    if what == "register":
        service, instance, host, port, endpoint, metadata = args
        registration = Registration(service, instance, host, port, endpoint, metadata)  # type: ignore[arg-type]
        await core.register(registration)
    elif what == "beat":
        service, instance, load = args
        if core.registry.get(service, instance) is not None:  # type: ignore[arg-type]
            core.heartbeat(service, instance, load)  # type: ignore[arg-type]
    elif what == "health":
        service, instance, status, load = args
        found = core.registry.get(service, instance)  # type: ignore[arg-type]
        if found is not None:
            core.registry.record_health(found, status, load)  # type: ignore[arg-type]
    elif what == "tick":
        assert isinstance(core.clock, FakeClock)
        core.clock.advance(args[0])  # type: ignore[arg-type]
        core.registry.sweep()
    else:
        service, instance = args
        if core.registry.get(service, instance) is not None:  # type: ignore[arg-type]
            await core.unregister(service, instance)  # type: ignore[arg-type]


def whole_encodings(core: DiscoveryCore, name: str) -> tuple[bytes | None, bytes]:
    """The service's answers as the models encode them when built whole."""
    healthy = HealthyResponse(
        service_name=name, healthy_instances=[InstanceRecord.of(i) for i in core.healthy(name)]
    )
    try:
        instances = [InstanceRecord.of(i) for i in core.instances(name)]
        listed = ServiceResponse(service_name=name, instances=instances).model_dump_json()
    except ServiceNotFound:
        listed = None
    return (None if listed is None else listed.encode()), healthy.model_dump_json().encode()


def spliced_encodings(
    core: DiscoveryCore, records: EncodedRecords, name: str
) -> tuple[bytes | None, bytes]:
    healthy = records.listing(
        HealthyResponse(service_name=name, healthy_instances=[]), core.healthy(name)
    )
    try:
        instances = core.instances(name)
    except ServiceNotFound:
        return None, healthy
    return records.listing(ServiceResponse(service_name=name, instances=[]), instances), healthy


def whole_services(services: dict[str, list[Instance]]) -> bytes:
    records = {name: [InstanceRecord.of(i) for i in listed] for name, listed in services.items()}
    return ServicesResponse(services=records).model_dump_json().encode()


@settings(max_examples=150, deadline=None, database=None)
@given(steps=STEPS)
def test_listings_read_as_the_models_through_every_change(steps: list[tuple[object, ...]]) -> None:
    async def run() -> None:
        core = new_core()
        records = EncodedRecords()
        for change in steps:
            await step(core, change)
            for name in [*SERVICES, "nope", 'a[]"b\\ü']:
                assert spliced_encodings(core, records, name) == whole_encodings(core, name)
            services = core.services()
            assert records.services(services) == whole_services(services)

    asyncio.run(run())


async def test_a_service_name_holding_brackets_is_listed_whole() -> None:
    core = new_core()
    records = EncodedRecords()
    await core.register(Registration("game", "a", "10.0.0.5", 1, None, {"k": "[]"}))
    services = {**core.services(), 'x[]"y': core.instances("game"), "empty": []}
    assert records.services(services) == whole_services(services)
    assert records.services({}) == b'{"services":{}}'


async def test_an_unchanged_instance_is_not_encoded_again() -> None:
    core = new_core()
    records = EncodedRecords()
    await core.register(Registration("game", "a", "10.0.0.5", 1, None, {"zone": "eu-1"}))
    instance = core.instances("game")[0]
    first = records.record(instance)
    assert records.record(instance) is first
    core.heartbeat("game", "a", 0.5)
    again = records.record(instance)
    assert again is not first
    assert b'"load_percentage":0.5' in again
    assert records.record(instance) is again


async def test_the_records_kept_are_bounded() -> None:
    core = new_core()
    records = EncodedRecords(size=3)
    for n in range(5):
        await core.register(Registration("game", f"i-{n}", "10.0.0.5", 1, None, {}))
    listed = records.listing(
        ServiceResponse(service_name="game", instances=[]), core.instances("game")
    )
    assert len(records) == 3
    assert listed.count(b'"instance_id"') == 5
