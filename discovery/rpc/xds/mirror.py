"""One ADS stream's copy of the services it follows, fed by its watcher's messages."""

from __future__ import annotations

from discovery.core.model import EventType, Instance
from discovery.core.watch.events import WatchBatch
from discovery.rpc.xds.dns import DnsCache
from discovery.rpc.xds.resources import Endpoint, ResourceCache, weight


class Mirror:
    """Instances by service as the watch stream told them (published loads included)."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, Instance]] = {}

    def apply(self, batch: WatchBatch) -> None:
        """Take in one watch message; a reset message starts the copy over."""
        services = self.services
        if batch.reset:
            services.clear()
        for event in batch.events:
            instance = event.instance
            name = instance.service_name
            if event.type is EventType.PUT:
                services.setdefault(name, {})[instance.instance_id] = instance
            else:
                instances = services.get(name)
                if instances is not None:
                    instances.pop(instance.instance_id, None)
                    if not instances:
                        del services[name]

    def clear(self) -> None:
        self.services.clear()

    def exists(self, name: str) -> bool:
        """The service has at least one instance, healthy or not."""
        return name in self.services

    def assignment(self, name: str, dns: DnsCache, cache: ResourceCache) -> bytes:
        """The encoded ClusterLoadAssignment of `name` (a service that exists).

        Built once per state for all streams: the instances are the snapshots the watch hub
        shares between streams, so the same objects (by identity) mean the same assignment,
        as long as no host name got a new address meanwhile.
        """
        instances = self.services[name]
        state = (name, dns.generation, *instances.values())
        return cache.shared(state, lambda: cache.load_assignment(name, self.endpoints(name, dns)))

    def endpoints(self, name: str, dns: DnsCache) -> tuple[Endpoint, ...]:
        """The healthy instances of `name` whose address is known, ordered by instance id."""
        instances = self.services.get(name)
        if not instances:
            return ()
        found = []
        for instance in instances.values():
            if not instance.healthy:
                continue
            address = dns.address(instance.host)
            if address is None:
                continue
            found.append(
                Endpoint(
                    instance.instance_id,
                    address,
                    instance.port,
                    weight(instance.load_percentage),
                    instance.host,
                )
            )
        found.sort()
        return tuple(found)
