"""Encoding instances for gRPC: cached heartbeat answers always equal a fresh encoding."""

from __future__ import annotations

from discovery.core.model import HealthStatus, Registration
from discovery.core.registry import Registry
from discovery.core.settings import Settings
from discovery.rpc.codec import InstanceMessages, instance_to_pb
from discovery.testing import FakeClock
from discovery.v1 import discovery_pb2 as pb


def test_cached_instance_messages_follow_every_change() -> None:
    clock = FakeClock(wall=1_800_000_000.123456)
    registry = Registry(Settings(), clock)
    messages = InstanceMessages(size=2)

    def check(service: str, instance_id: str) -> None:
        instance = registry.require(service, instance_id)
        message = pb.Instance()
        messages.fill(message, instance)
        assert message == instance_to_pb(instance)

    registry.register(Registration("game", "a", "10.0.0.1", 1, "/health", {"v": "1"}))
    check("game", "a")
    for step in range(3):
        clock.advance(0.25)
        registry.heartbeat("game", "a")  # only last_heartbeat moves
        check("game", "a")
        registry.heartbeat("game", "a", 0.01 * step)  # a load drift without a new revision
        check("game", "a")
    instance = registry.require("game", "a")
    registry.record_health(instance, HealthStatus.HEALTHY, 0.5)
    check("game", "a")
    clock.advance(1)
    registry.record_health(instance, None, None)  # a new last_health_check only
    check("game", "a")
    registry.register(Registration("game", "a", "10.0.0.2", 2, None, {"v": "2"}))
    check("game", "a")
    registry.unregister("game", "a")
    registry.register(Registration("game", "a", "10.0.0.2", 2, None, {"v": "2"}))
    check("game", "a")
    for name in ("b", "c", "d"):  # past the cache size
        registry.register(Registration("game", name, "10.0.0.3", 3, None, {}))
        check("game", name)
    check("game", "a")
