"""The in-memory store: nothing outlives the process (for throwaway runs and tests)."""

from __future__ import annotations

from collections.abc import Callable

from discovery.core.model import Instance
from discovery.core.store.base import Restored


class MemoryStore:
    """Keeps nothing: the registry itself is the only copy of the state."""

    description = "memory"

    async def open(self, revision: Callable[[], int]) -> Restored:
        return Restored()

    async def put(self, instance: Instance) -> None:
        pass

    async def delete(self, service_name: str, instance_id: str) -> None:
        pass

    def forget(self, instance: Instance) -> None:
        pass

    def touch(self, instance: Instance) -> None:
        pass

    def changed(self, instance: Instance) -> None:
        pass

    async def close(self) -> None:
        pass
