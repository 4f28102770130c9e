"""Host names of instances, resolved for xDS in the background, cached and refreshed."""

from __future__ import annotations

import logging

import pytest

from discovery.rpc.xds.dns import DnsCache, ip_literal
from discovery.testing import eventually


def test_ip_literals_are_used_as_they_are() -> None:
    assert ip_literal("10.0.0.5") == "10.0.0.5"
    assert ip_literal("[::1]") == "::1"
    assert ip_literal("api.internal") is None


async def test_names_resolve_in_the_background_and_follow_changes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "discovery.xds")
    table = {"api.internal": "10.0.0.1"}
    asked: list[str] = []  # names the resolver was asked for, in order

    async def resolve(host: str) -> str:
        asked.append(host)
        if host not in table:
            raise OSError(f"{host} not found")
        return table[host]

    dns = DnsCache(refresh=0.05, resolve=resolve)
    changes: list[int] = []
    dns.subscribe(lambda: changes.append(dns.generation))
    try:
        assert dns.address("api.internal") is None  # never resolved on the caller's path
        await eventually(lambda: dns.address("api.internal") == "10.0.0.1")
        assert changes == [1]
        table["api.internal"] = "10.0.0.2"  # refreshed while in use
        await eventually(lambda: dns.address("api.internal") == "10.0.0.2")
        assert changes == [1, 2]
        del table["api.internal"]  # a failure keeps the last address, with one warning
        # (Each check looks the name up, as a stream would: names nobody asks for are forgotten.)
        await eventually(
            lambda: dns.address("api.internal") == "10.0.0.2" and "keeping 10.0.0.2" in caplog.text
        )
        assert dns.address("gone.internal") is None

        async def still_used() -> bool:
            dns.address("gone.internal")  # a stream still asks for it
            return asked.count("gone.internal") >= 3

        await eventually(lambda: "its instances are left out" in caplog.text)
        await eventually(still_used)  # retried at every refresh, logged once
        assert caplog.text.count("host 'gone.internal'") == 1
    finally:
        dns.close()
