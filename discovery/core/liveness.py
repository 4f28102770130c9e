"""Deadlines by last sign of life: the TTL and heartbeat sweeps look only at the front.

A sign of life (registration, heartbeat) moves an instance to the back, and monotonic time never
goes back, so the instances stay ordered from the longest silent to the latest heard: a sweep
stops at the first one still within its span, whatever the size of the registry.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from discovery.core.model import Instance


class Deadlines:
    """Instances with the monotonic time they were last heard from, oldest first."""

    __slots__ = ("_at",)

    def __init__(self) -> None:
        # A plain dict keeps insertion order and costs less than an OrderedDict; re-inserting
        # is how an entry moves to the back. Instances hash by identity.
        self._at: dict[Instance, float] = {}

    def touch(self, instance: Instance, at: float) -> None:
        """`instance` was heard from at `at` (not earlier than any time given before)."""
        self._at.pop(instance, None)
        self._at[instance] = at

    def add_all(self, instances: Iterable[Instance], at: float) -> None:
        """Instances not held yet, all heard from at `at` (not earlier than any time before)."""
        self._at.update(dict.fromkeys(instances, at))

    def restart(self, at: float) -> None:
        """Every instance heard from at `at` (not earlier than any time given before)."""
        self._at = dict.fromkeys(self._at, at)

    def discard(self, instance: Instance) -> None:
        self._at.pop(instance, None)

    def first(self) -> float | None:
        """When the longest silent instance was last heard from."""
        for at in self._at.values():
            return at
        return None

    def silent_since(self, before: float) -> Iterator[Instance]:
        """Take out, oldest first, the instances last heard from at or before `before`."""
        at = self._at
        while at:
            instance, heard = next(iter(at.items()))
            if heard > before:
                return
            del at[instance]
            yield instance
