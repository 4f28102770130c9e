"""Registrations and unregistrations between their check and their application.

The facade writes a registration or unregistration to the store first and applies it to the
registry once the store has it. Between the two it awaits, and other writes run meanwhile.
`WriteGate` keeps what must still hold when the write is applied:

- Instance limits: a new instance is counted from its check on (a reservation), so
  concurrent registrations cannot all pass a limit that only one of them fits under.
- Expiry: an instance with a write in flight is not expired (see `Registry.writing`), so an
  expiry cannot land between a registration's store write and its application.

Store writes are made durable in the order they are asked for and applied from their completions
in that order, so the registry applies them in the store's order too.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

from discovery.core.registry import Key, Registry


class WriteGate:
    """The writes in flight over one registry."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        # Keys with any write in flight, and how many.
        self._writing: Counter[Key] = Counter()
        registry.writing = self._writing
        # Keys that may be created by a registration in flight, and how many hold that claim.
        self._new: Counter[Key] = Counter()
        self._new_by_service: Counter[str] = Counter()
        # Keys with an unregistration in flight.
        self._leaving: Counter[Key] = Counter()

    @contextlib.contextmanager
    def registering(self, key: Key) -> Iterator[None]:
        """Around a registration's write and application; `LimitExceeded` (nothing held)
        when a new instance would pass a limit, counting those already in flight."""
        new = self._registry.get(*key) is None or key in self._leaving
        if new and key not in self._new:
            service = key[0]
            self._registry.check_limits(service, len(self._new), self._new_by_service[service])
            self._new_by_service[service] += 1
        if new:
            self._new[key] += 1
        # Counted inline, not through `_held`: every registration passes here.
        self._writing[key] += 1
        try:
            yield
        finally:
            _drop(self._writing, key)
            if new:
                self._release_new(key)

    @contextlib.contextmanager
    def unregistering(self, key: Key) -> Iterator[None]:
        """Around an unregistration's write and application."""
        self._writing[key] += 1
        self._leaving[key] += 1
        try:
            yield
        finally:
            _drop(self._leaving, key)
            _drop(self._writing, key)

    def _release_new(self, key: Key) -> None:
        self._new[key] -= 1
        if self._new[key] == 0:
            del self._new[key]
            service = key[0]
            self._new_by_service[service] -= 1
            if self._new_by_service[service] == 0:
                del self._new_by_service[service]


def _drop(counter: Counter[Key], key: Key) -> None:
    """One hold on `key` fewer; the key leaves `counter` with its last."""
    held = counter[key] - 1
    if held:
        counter[key] = held
    else:
        del counter[key]
