"""Blocking facades over the async SDK, for code without an event loop (Flask, scripts, threads).

Each facade runs its async counterpart on an event loop in a daemon thread of its own.

    with SyncDiscoveryClient("127.0.0.1:50051", secret="s3cret") as client:
        client.register("billing", "billing-1", "10.0.0.7", 8000)
        with SyncServiceWatcher("127.0.0.1:50051", ["game"]) as watcher:
            address = watcher.pick("game").address
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

from discovery.client._common import ServiceInstance
from discovery.client.registration import DiscoveryClient
from discovery.client.watcher import ChangeCallback, ServiceWatcher, Strategy

T = TypeVar("T")


class _LoopThread:
    """An event loop running in a daemon thread; `run()` blocks on a coroutine there."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.stopped = False
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coroutine` on the loop and wait for its result (cancelled on time-out)."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def call(self, function: Callable[..., T], *args: Any) -> T:
        """Call a plain function on the loop's thread; its result or error comes back here."""

        async def call() -> T:
            return function(*args)

        return self.run(call())

    def stop(self) -> None:
        """Stop the loop and its thread (idempotent)."""
        if self.stopped:
            return
        self.stopped = True
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


class _Closing:
    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class SyncDiscoveryClient(_Closing):
    """`DiscoveryClient` with blocking methods; the keepalive runs in the background thread."""

    def __init__(self, target: str, *, secret: str | None = None, **options: Any) -> None:
        self._thread = _LoopThread("discovery-client")

        async def build() -> DiscoveryClient:
            return DiscoveryClient(target, secret=secret, **options)

        try:
            self._client = self._thread.run(build())
        except BaseException:
            self._thread.stop()
            raise

    def register(
        self,
        service_name: str,
        instance_id: str,
        host: str,
        port: int,
        *,
        health_endpoint: str | None = "/health",
        metadata: Mapping[str, str] | None = None,
    ) -> ServiceInstance:
        """See `DiscoveryClient.register`."""
        return self._thread.run(
            self._client.register(
                service_name,
                instance_id,
                host,
                port,
                health_endpoint=health_endpoint,
                metadata=metadata,
            )
        )

    def set_load(self, service_name: str, instance_id: str, load: float | None) -> None:
        """See `DiscoveryClient.set_load` (KeyError for an instance not registered here)."""
        self._thread.call(self._client.set_load, service_name, instance_id, load)

    def unregister(self, service_name: str, instance_id: str) -> None:
        """See `DiscoveryClient.unregister`."""
        self._thread.run(self._client.unregister(service_name, instance_id))

    def close(self, *, unregister: bool = True) -> None:
        """See `DiscoveryClient.close`; also stops the background thread. Idempotent."""
        if self._thread.stopped:
            return
        try:
            self._thread.run(self._client.close(unregister=unregister))
        finally:
            self._thread.stop()


class SyncServiceWatcher(_Closing):
    """`ServiceWatcher` for blocking code: synced on return from the constructor.

    `pick()` and `instances()` read an immutable copy of the view, so any thread may call them;
    `on_change` runs on the watcher's own thread.
    """

    def __init__(
        self,
        target: str,
        services: Iterable[str] = (),
        *,
        healthy_only: bool = True,
        on_change: ChangeCallback | None = None,
        timeout: float | None = 30.0,
        **options: Any,
    ) -> None:
        self._thread = _LoopThread("discovery-watcher")

        async def build() -> ServiceWatcher:
            watcher = ServiceWatcher(
                target, services, healthy_only=healthy_only, on_change=on_change, **options
            )
            try:
                await watcher.wait_synced()
            except BaseException:
                await watcher.close()
                raise
            return watcher

        try:
            self._watcher = self._thread.run(build(), timeout)
        except BaseException:
            self._thread.stop()
            raise

    @property
    def revision(self) -> int:
        return self._watcher.revision

    def instances(self, service: str | None = None) -> list[ServiceInstance]:
        """See `ServiceWatcher.instances`."""
        return self._watcher.instances(service)

    def pick(self, service: str, strategy: Strategy = "round_robin") -> ServiceInstance:
        """See `ServiceWatcher.pick`."""
        return self._watcher.pick(service, strategy)

    def close(self) -> None:
        """Stop following and stop the background thread. Idempotent."""
        if self._thread.stopped:
            return
        try:
            self._thread.run(self._watcher.close(), 10)
        finally:
            self._thread.stop()
