"""The protocol-neutral facade every adapter calls: writes, reads, watches, KeepAlive sessions.

The REST facade and the gRPC servicer translate their requests into calls on `DiscoveryCore`
and nothing else, so the protocols cannot drift apart. Behind it: the registry (the in-memory
read model), the watch hub, the health monitor, the alert book and the webhook, plus the
background work that runs them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

from discovery.core.auth import Authenticator
from discovery.core.clock import Clock, SystemClock
from discovery.core.errors import LimitExceeded, ShuttingDown, StoreUnavailable
from discovery.core.health.alerts import AlertBook
from discovery.core.health.monitor import HealthMonitor
from discovery.core.health.webhook import WebhookSink
from discovery.core.keepalive import KeepAliveSessions
from discovery.core.load import ProcessLoad
from discovery.core.metrics import GRPC, Metrics, ServiceCensus, census
from discovery.core.model import Alert, Instance, Registration
from discovery.core.registry import Registry
from discovery.core.settings import Settings
from discovery.core.shared import SharedStore
from discovery.core.store.base import Store
from discovery.core.store.location import store_at
from discovery.core.store.memory import MemoryStore
from discovery.core.watch.events import WatchSelector
from discovery.core.watch.hub import WatchHub
from discovery.core.watch.queue import Watcher
from discovery.core.writes import WriteGate

log = logging.getLogger("discovery.core")
# Which store the state comes from is announced whatever LOG_LEVEL says, like the ports.
store_log = logging.getLogger("discovery.store")
store_log.setLevel(logging.INFO)


@dataclass(frozen=True, slots=True)
class Registered:
    """The outcome of a registration."""

    instance: Instance
    created: bool


class DiscoveryCore:
    """What both protocols share, built from one `Settings`. Nothing runs until `start()`."""

    def __init__(
        self, settings: Settings, clock: Clock | None = None, store: Store | None = None
    ) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.store: Store = store or store_at(settings.store, settings.store_write_timeout)
        self.metrics = Metrics()
        self.registry = Registry(settings, self.clock, self.metrics)
        self.registry.attach(self.store)
        self._writes = WriteGate(self.registry)
        self.auth = Authenticator(settings.secret)
        self.alert_book = AlertBook(settings.critical_load_threshold, self.clock.time)
        self.registry.subscribe(self.alert_book)
        self.alert_book.add_sink(self.metrics.alert)
        self.monitor = HealthMonitor(settings, self.registry, self.clock, metrics=self.metrics)
        self.registry.probes = self.monitor
        self.webhook: WebhookSink | None = None
        if settings.alert_webhook_url:
            self.webhook = WebhookSink(settings.alert_webhook_url)
            self.alert_book.add_sink(self.webhook)
        self.process_load = ProcessLoad()
        self.shutting_down = False
        self._shutdown_hooks: list[Callable[[], None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.watch_hub = WatchHub(self.registry, settings, self.metrics)
        self.on_shutdown(self.watch_hub.close)
        self.keepalive = KeepAliveSessions(self)
        # A store shared by replicas (etcd) feeds the registry itself: see `SharedStore`.
        self.shared = isinstance(self.store, SharedStore)
        # A shared store (etcd) bounds its own calls; a local one is bounded here.
        self._write_timeout = None if self.shared else settings.store_write_timeout
        # The memory store's writes never wait, so nothing can interrupt one: no guard needed.
        self._instant = isinstance(self.store, MemoryStore)
        if isinstance(self.store, SharedStore):
            self.store.bind(self)

    # -- writes (callers have authenticated and validated) ----------------------------------
    # `via` names the protocol a write came in by (`discovery.core.metrics`), for the counts.

    async def register(self, registration: Registration, via: str = GRPC) -> Registered:
        """Add or update an instance once the store has it; `LimitExceeded` or
        `StoreUnavailable` leave the registry as it was."""
        key = (registration.service_name, registration.instance_id)
        hold = self._writes.registering(key)
        hold.__enter__()  # left in `_apply_when_durable`, or below when the write never began
        try:
            record = self.registry.record_of(registration)
            existed = self.registry.get(*key) is not None
            written = self.store.put(record)
        except BaseException:
            hold.__exit__(None, None, None)
            raise

        def apply() -> Registered:
            return self._registered(registration, record, existed, via)

        return await self._apply(written, hold, apply)

    async def _apply(
        self, written: Awaitable[None], hold: AbstractContextManager[None], apply: Callable[[], T]
    ) -> T:
        """`apply()` once the store has `written`, then leave `hold`."""
        if not self._instant:
            return await _apply_when_durable(written, hold, apply, self._write_timeout)
        try:  # the memory store's writes never wait, so nothing can interrupt one
            await written
            return apply()
        finally:
            hold.__exit__(None, None, None)

    def _registered(
        self, registration: Registration, record: Instance, existed: bool, via: str
    ) -> Registered:
        """Apply a registration the store has made durable."""
        key = record.key
        if self.shared:
            # Applied from the store's watch before `put` returned; gone again only if another
            # replica removed it meanwhile.
            instance, created = self.registry.get(*key) or record, not existed
        else:
            try:
                instance, created = self.registry.register(registration, record.registered_at)
            except LimitExceeded:
                # Cannot happen while the gate counts right; if it does, take it back.
                self.store.forget(record)
                raise
        self.metrics.registrations[via] += 1
        if created:
            log.info(
                "Registered %s:%s at %s:%s",
                instance.service_name,
                instance.instance_id,
                instance.host,
                instance.port,
            )
        return Registered(instance, created)

    def heartbeat(
        self, service_name: str, instance_id: str, load: float | None = None, via: str = GRPC
    ) -> Instance:
        """Record a heartbeat (and a pushed load); `InstanceNotFound` when unknown."""
        instance = self.registry.heartbeat(service_name, instance_id, load)
        self.metrics.heartbeats[via] += 1
        return instance

    async def unregister(self, service_name: str, instance_id: str, via: str = GRPC) -> Instance:
        """Remove an instance once the store has forgotten it; `InstanceNotFound` when unknown,
        `StoreUnavailable` leaves it registered."""
        hold = self._writes.unregistering((service_name, instance_id))
        hold.__enter__()  # left as in `register`
        try:
            instance = self.registry.require(service_name, instance_id)
            written = self.store.delete(service_name, instance_id)
        except BaseException:
            hold.__exit__(None, None, None)
            raise

        def apply() -> Instance:
            return self._unregistered(instance, via)

        return await self._apply(written, hold, apply)

    def _unregistered(self, instance: Instance, via: str) -> Instance:
        """Apply an unregistration the store has made durable."""
        service_name, instance_id = instance.key
        if not self.shared:  # a shared store's watch has removed it already
            instance = self.registry.unregister(service_name, instance_id)
        self.metrics.unregistrations[via] += 1
        log.info("Unregistered %s:%s", service_name, instance_id)
        return instance

    def sever(self, keys: list[tuple[str, str]]) -> None:
        """A stream that kept these instances alive broke: they turn unhealthy at once."""
        self.registry.sever(keys)

    def hold(self, key: tuple[str, str], held: bool) -> None:
        """A KeepAlive stream took or let go of an instance: a shared store records which
        replica keeps it, so the instance is severed when that replica dies."""
        if isinstance(self.store, SharedStore):
            self.store.hold(key, held)

    # -- reads ------------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        """The revision of the last change a watcher could see."""
        return self.registry.revision

    @property
    def version(self) -> int:
        """Moves on every change, timestamps included (for caches of encoded answers)."""
        return self.registry.version

    def service_version(self, service_name: str) -> int:
        """Like `version`, for one service; 0 while the service has no instances."""
        return self.registry.service_version(service_name)

    def services(self) -> dict[str, list[Instance]]:
        """Every service with its instances, both in registration order."""
        return self.registry.services()

    def instances(self, service_name: str) -> list[Instance]:
        """The instances of one service; `ServiceNotFound` when it has none."""
        return self.registry.instances(service_name)

    def healthy(self, service_name: str) -> list[Instance]:
        """The healthy instances of one service (empty when the service is unknown)."""
        return self.registry.healthy(service_name)

    def watch(self, selector: WatchSelector, via: str = GRPC) -> Watcher:
        """Open a watcher; `ShuttingDown` once shutdown has begun."""
        self.check_serving()
        return self.watch_hub.watch(selector, via)

    def census(self) -> dict[str, ServiceCensus]:
        """Every service's instances counted by status and critical load (for the gauges)."""
        return census(self.registry.services())

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
        """Open the store and take in what it holds, then start the background work: TTL
        sweeps, the load meter, probes and alert delivery. `StoreFailure` when the store
        cannot be used."""
        restored = await self.store.open(lambda: self.registry.revision)
        if not self.shared:  # a shared store loads the registry itself, at its revision
            self.registry.restore(restored.instances, restored.revision)
            self.watch_hub.reload()
        self.alert_book.restore(list(self.registry.all_instances()))
        if self.store.description == "memory":
            store_log.info("Store: memory")
        else:
            store_log.info(
                "Store: %s (%d instances restored)", self.store.description, len(self.registry)
            )
        if not self.shared:  # a shared store expires instances once for every replica
            self.spawn("registry-sweeper", self._sweep_forever)
        self.spawn("process-load", self.process_load.run)
        self.spawn("health-monitor", self.monitor.run)
        if self.webhook is not None:
            self.spawn("alert-webhook", self.webhook.run)

    def serving(self) -> None:
        """Both ports serve: restored instances get their TTL and heartbeat grace from now."""
        self.registry.restart_deadlines()

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
        await self.store.close()

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


T = TypeVar("T")
#: Seconds the core waits past the store's write timeout before it answers for the store.
_AFTER_THE_STORE = 0.1


async def _apply_when_durable(
    written: Awaitable[None],
    hold: AbstractContextManager[None],
    apply: Callable[[], T],
    within: float | None,
) -> T:
    """`apply()` once `written` (the store's write) is durable, even if the caller is cancelled
    (a client that hung up) or gives up meanwhile: a write the store made durable must be
    applied, or store and registry would disagree. `hold` (the write gate's) is left once the
    write is applied or refused.

    The write is applied from its own completion, in the order the store completes writes, with
    no task of its own (this is every durable write's path). The caller waits at most about
    `within` seconds (None: no bound), then gets `StoreUnavailable`: the store refuses a write it
    had not begun by then (so that refusal is final); one it had begun may still commit, and is
    then applied (like a request in flight when its client hung up).
    """
    loop = asyncio.get_running_loop()
    future = asyncio.ensure_future(written)
    outcome: asyncio.Future[T] = loop.create_future()  # what the caller awaits

    def settle(_: object) -> None:
        try:
            if future.cancelled():
                raise StoreUnavailable("the store's write was cancelled")
            error = future.exception()
            if error is not None:
                raise error
            result = apply()
        except Exception as exc:  # the caller's answer (nobody's, when it is gone)
            if not outcome.done():
                outcome.set_exception(exc)
        else:
            if not outcome.done():
                outcome.set_result(result)
        finally:
            hold.__exit__(None, None, None)

    future.add_done_callback(settle)
    # A moment after the store's own bound, so the store has refused what it can first.
    timer = None
    if within is not None:
        timer = loop.call_later(within + _AFTER_THE_STORE, _give_up, outcome, within)
    try:
        return await outcome
    finally:
        if timer is not None:
            timer.cancel()


def _give_up(outcome: asyncio.Future[Any], within: float) -> None:
    if not outcome.done():
        outcome.set_exception(
            StoreUnavailable(f"the store did not answer within {within:g}s; try again")
        )
