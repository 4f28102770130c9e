"""Sharing of equal values among instances, so a large registry holds each only once.

Fleets repeat themselves: many instances carry the same metadata (version, zone, team) and the
same service name. Keeping one copy of each saves most of an instance's memory.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Mapping


class Metadata(dict[str, str]):
    """An instance's metadata, shared by every instance with the same entries in the same
    order. Never changed in place: a re-registration brings a new one."""

    __slots__ = ("__weakref__",)


class MetadataPool:
    """Hands out one shared `Metadata` per distinct content; unused ones go away by themselves."""

    def __init__(self) -> None:
        self._shared: weakref.WeakValueDictionary[tuple[tuple[str, str], ...], Metadata] = (
            weakref.WeakValueDictionary()
        )
        self._empty = Metadata()

    def share(self, metadata: Mapping[str, str] | None) -> Metadata:
        if not metadata:
            return self._empty
        key = tuple(metadata.items())
        shared = self._shared.get(key)
        if shared is None:
            shared = Metadata((sys.intern(k), sys.intern(v)) for k, v in key)
            self._shared[key] = shared
        return shared


def name(value: str) -> str:
    """One copy of a name used by many instances (service names, hosts)."""
    return sys.intern(value)
