"""The Python client SDK: register and keep instances alive, and follow the instances of others.

A service registers itself and stays registered while it runs; its instances turn unhealthy the
moment its process dies (the KeepAlive stream breaks), and are removed when it exits cleanly:

    from discovery.client import DiscoveryClient

    async with DiscoveryClient("discovery:50051", secret=os.environ["DISCOVERY_SECRET"]) as client:
        await client.register("game", "game-1", "10.0.0.5", 8080)
        await serve_forever()

A gateway keeps a local, always-current view of the healthy instances of the services it routes
to, and picks one per request without a network call:

    from discovery.client import ServiceWatcher

    async with ServiceWatcher("discovery:50051", ["game", "chat"]) as watcher:
        instance = watcher.pick("game", "least_load")  # or "round_robin", "random"
        async for change in watcher.changes():         # or ServiceWatcher(on_change=...)
            log.info("%s %s", change.type, change.instance.address)

Over TLS, give the server's CA (and, when the server requires client certificates, this
client's certificate and key): `DiscoveryClient(target, ca_file=..., cert_file=..., key_file=...)`;
`ServiceWatcher` and the blocking facades take the same three.

Both survive server restarts: they reconnect with jittered exponential backoff, the client
registers its instances again, and the watcher resumes from the last revision it saw.
`SyncDiscoveryClient` and `SyncServiceWatcher` do the same for code without an event loop.
"""

from discovery.client._common import (
    Backoff,
    InstanceChange,
    NoInstanceAvailable,
    ServiceInstance,
    TLSFiles,
    open_channel,
)
from discovery.client.registration import DiscoveryClient
from discovery.client.sync import SyncDiscoveryClient, SyncServiceWatcher
from discovery.client.watcher import ServiceWatcher

__all__ = [
    "Backoff",
    "DiscoveryClient",
    "InstanceChange",
    "NoInstanceAvailable",
    "ServiceInstance",
    "ServiceWatcher",
    "SyncDiscoveryClient",
    "SyncServiceWatcher",
    "TLSFiles",
    "open_channel",
]
