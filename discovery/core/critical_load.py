"""Critical load: the state machine with hysteresis that decides an instance's flag.

The registry asks `CriticalLoadPolicy` whether an instance is at critical load whenever its load
or health changes, and publishes the flag with the change.
"""

from __future__ import annotations

from dataclasses import dataclass

from discovery.core.settings import Settings


@dataclass(frozen=True, slots=True)
class CriticalLoadPolicy:
    """At critical load from `threshold` up; back to normal below `threshold - hysteresis`."""

    threshold: float
    hysteresis: float

    @classmethod
    def from_settings(cls, settings: Settings) -> CriticalLoadPolicy:
        return cls(settings.critical_load_threshold, settings.critical_load_hysteresis)

    def is_critical(self, critical_now: bool, load: float, healthy: bool) -> bool:
        """The flag after a change, given the flag before. Only a healthy instance is critical."""
        if not healthy:
            return False
        if critical_now:
            return load >= self.threshold - self.hysteresis
        return load >= self.threshold
