"""The plain data of watching: the events watchers share, the messages they get, what they ask."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from discovery.core import validation
from discovery.core.errors import InvalidArgument
from discovery.core.model import EventType, Instance

T = TypeVar("T")


class WatchEvent:
    """One change of one instance as watchers see it; shared by every watcher it goes to."""

    __slots__ = ("_encoded", "_weight", "instance", "revision", "type")

    def __init__(self, kind: EventType, instance: Instance, revision: int) -> None:
        self.type = kind
        self.instance = instance
        self.revision = revision
        self._encoded: dict[Callable[..., Any], Any] | None = None
        self._weight = 0

    def encoded(self, codec: Callable[[WatchEvent], T]) -> T:
        """`codec(self)`, computed on first use and cached on the event for every later stream."""
        cache = self._encoded
        if cache is None:
            cache = self._encoded = {}
        try:
            return cast(T, cache[codec])
        except KeyError:
            value = cache[codec] = codec(self)
            return value

    @property
    def weight(self) -> int:
        """A rough encoded size in bytes, to keep messages well below transport limits."""
        if not self._weight:
            instance = self.instance
            self._weight = (
                256
                + len(instance.host)
                + sum(len(key) + len(value) + 4 for key, value in instance.metadata.items())
            )
        return self._weight

    def __repr__(self) -> str:
        key = f"{self.instance.service_name}:{self.instance.instance_id}"
        return f"WatchEvent({self.type.value} {key} @{self.revision})"


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """One message of a watch stream (a gRPC `WatchResponse`, or SSE events).

    `revision` is what the client has now been told everything up to: the snapshot's revision on
    every snapshot message, otherwise the last event's revision, or the current revision on a
    progress message (no events).
    """

    revision: int
    events: Sequence[WatchEvent] = ()
    reset: bool = False
    synced: bool = True
    #: Part of a snapshot: its events are the state at `revision`, not changes after the last
    #: message. (The last message of a snapshot cannot be told apart by the other fields.)
    snapshot: bool = False
    _encoded: dict[Callable[..., Any], Any] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def encoded(self, codec: Callable[[WatchBatch], T]) -> T:
        """`codec(self)`, computed on first use and cached: the watchers of a feed that take
        the same message share it, and its encoding."""
        cache = self._encoded
        try:
            return cast(T, cache[codec])
        except KeyError:
            value = cache[codec] = codec(self)
            return value

    @property
    def is_progress(self) -> bool:
        return not self.events and not self.snapshot


@dataclass(frozen=True, slots=True)
class WatchSelector:
    """What a watcher asked for: services (empty = all), healthy only, a resume point."""

    services: frozenset[str] = frozenset()
    healthy_only: bool = False
    start_revision: int = 0

    @classmethod
    def checked(
        cls, services: Iterable[str], healthy_only: bool = False, start_revision: int = 0
    ) -> WatchSelector:
        """A selector from request fields; `InvalidArgument` naming the field when one is bad."""
        names = frozenset(validation.check_service_name(s, "service_names") for s in services)
        if start_revision < 0:
            raise InvalidArgument("start_revision", "must not be negative")
        return cls(names, bool(healthy_only), int(start_revision))
