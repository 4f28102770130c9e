"""The protocol-neutral core both adapters call: registry, alerts, auth and background work.

The REST facade and the gRPC servicer translate their requests into calls on `DiscoveryCore` and
its registry, so the two protocols cannot drift apart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from discovery.alerts import AlertBook
from discovery.auth import Authenticator
from discovery.clock import Clock, SystemClock
from discovery.config import Settings
from discovery.errors import ShuttingDown
from discovery.health_monitor import HealthMonitor
from discovery.load import ProcessLoad
from discovery.model import Alert, Instance, Registration
from discovery.registry import Registry
from discovery.watch import WatchHub
from discovery.webhook import WebhookSink

log = logging.getLogger("discovery.core")


@dataclass(frozen=True, slots=True)
class Registered:
    """The outcome of a registration."""

    instance: Instance
    created: bool


class DiscoveryCore:
    """What both protocols share, built from one `Settings`. Nothing runs until `start()`."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.registry = Registry(settings, self.clock)
        self.auth = Authenticator(settings.secret)
        self.alert_book = AlertBook(settings.critical_load_threshold, self.clock.time)
        self.registry.subscribe(self.alert_book)
        self.monitor = HealthMonitor(settings, self.registry, self.clock)
        self.registry.probes = self.monitor
        self.webhook: WebhookSink | None = None
        if settings.alert_webhook_url:
            self.webhook = WebhookSink(settings.alert_webhook_url)
            self.alert_book.add_sink(self.webhook)
        self.process_load = ProcessLoad()
        self.shutting_down = False
        self._shutdown_hooks: list[Callable[[], None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.watch_hub = WatchHub(self.registry, settings)
        self.on_shutdown(self.watch_hub.close)

    # -- writes (callers have authenticated and validated) ----------------------------------

    def register(self, registration: Registration) -> Registered:
        instance, created = self.registry.register(registration)
        if created:
            log.info(
                "Registered %s:%s at %s:%s",
                instance.service_name,
                instance.instance_id,
                instance.host,
                instance.port,
            )
        return Registered(instance, created)

    def heartbeat(self, service_name: str, instance_id: str, load: float | None = None) -> Instance:
        return self.registry.heartbeat(service_name, instance_id, load)

    def unregister(self, service_name: str, instance_id: str) -> Instance:
        instance = self.registry.unregister(service_name, instance_id)
        log.info("Unregistered %s:%s", service_name, instance_id)
        return instance

    # -- reads ------------------------------------------------------------------------------

    def alerts(self) -> list[Alert]:
        return self.alert_book.alerts()

    def own_load(self) -> float:
        return self.process_load.value()

    def check_serving(self) -> None:
        """Raise `ShuttingDown` once shutdown has begun (new streams are refused)."""
        if self.shutting_down:
            raise ShuttingDown()

    # -- lifecycle --------------------------------------------------------------------------

    def on_shutdown(self, hook: Callable[[], None]) -> None:
        """Call `hook` when shutdown begins (ends watch streams, flips health to NOT_SERVING)."""
        self._shutdown_hooks.append(hook)

    def spawn(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run `work` in the background until `stop()`; a crash is logged, not silent."""
        task = asyncio.get_running_loop().create_task(self._guard(name, work), name=name)
        self._tasks.append(task)

    async def start(self) -> None:
        """Start the background work: TTL sweeps, the load meter, probes and alert delivery."""
        self.spawn("registry-sweeper", self._sweep_forever)
        self.spawn("process-load", self.process_load.run)
        self.spawn("health-monitor", self.monitor.run)
        if self.webhook is not None:
            self.spawn("alert-webhook", self.webhook.run)

    def begin_shutdown(self) -> None:
        """Refuse new streams and tell the hooks; idempotent."""
        if self.shutting_down:
            return
        self.shutting_down = True
        for hook in self._shutdown_hooks:
            try:
                hook()
            except Exception:
                log.exception("Shutdown hook %r failed", hook)

    async def stop(self, wait: float = 2.0) -> None:
        """Cancel the background work and wait for it, at most `wait` seconds."""
        self.begin_shutdown()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=wait)
            for task in pending:
                log.warning("Background task %s did not stop in %ss", task.get_name(), wait)
        self._tasks.clear()

    async def _guard(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("Background task %s crashed", name)

    async def _sweep_forever(self) -> None:
        # Sleep until the next deadline, but wake at least every `cap` seconds so a registration
        # made meanwhile with a short TTL is still expired on time.
        settings = self.settings
        cap = min(1.0, max(0.02, min(settings.registration_ttl, settings.heartbeat_grace) / 10))
        while True:
            deadline = self.registry.sweep()
            delay = deadline - self.clock.monotonic()
            await asyncio.sleep(min(cap, max(0.01, delay)))
