"""The book of active critical-load alerts and its sinks.

The registry decides the critical-load flag (`discovery.core.critical_load`) and publishes it with
each change. `AlertBook` listens to those changes and turns each raise and each clear into
exactly one log line, one entry in (or removal from) the list of active alerts, and one call of
every sink (the webhook, for one).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Literal

from discovery.core.model import Alert, Change, EventType, Instance

log = logging.getLogger("discovery.alerts")

AlertEvent = Literal["alert.raised", "alert.cleared"]
AlertSink = Callable[[AlertEvent, Alert, float], None]


class AlertBook:
    """The active critical-load alerts, kept current from registry changes."""

    def __init__(self, threshold: float, now: Callable[[], float]) -> None:
        self._threshold = threshold
        self._now = now
        self._active: dict[tuple[str, str], Alert] = {}
        self._sinks: list[AlertSink] = []
        #: Whether this process delivers the alerts of an instance to the sinks (replicas on a
        #: shared store: only the instance's owner does, so the webhook hears each alert once).
        self.deliver_for: Callable[[tuple[str, str]], bool] = lambda key: True

    def add_sink(self, sink: AlertSink) -> None:
        """Call `sink(event, alert, at)` for every raise and clear."""
        self._sinks.append(sink)

    def alerts(self) -> list[Alert]:
        """Active alerts, oldest first."""
        return list(self._active.values())

    def restore(self, instances: Iterable[Instance]) -> None:
        """Take in the alerts of restored instances at critical load, silently: they were
        raised (logged, sent) before the restart."""
        for instance in instances:
            if instance.critical_load:
                key = (instance.service_name, instance.instance_id)
                since = instance.critical_since
                at = self._now() if since is None else since
                self._active[key] = Alert(*key, instance.load_percentage, self._threshold, at)

    def __call__(self, change: Change) -> None:
        instance = change.instance
        key = (instance.service_name, instance.instance_id)
        critical = change.type is EventType.PUT and instance.critical_load
        if critical and key not in self._active:
            since = instance.critical_since if instance.critical_since is not None else self._now()
            alert = Alert(*key, instance.load_percentage, self._threshold, since)
            self._active[key] = alert
            log.warning(
                "Critical load: %s:%s at %.2f (threshold %.2f)",
                *key,
                instance.load_percentage,
                self._threshold,
            )
            self._emit("alert.raised", alert)
        elif critical:
            alert = self._active[key]
            self._active[key] = Alert(*key, instance.load_percentage, self._threshold, alert.since)
        elif key in self._active:
            alert = self._active.pop(key)
            alert = Alert(*key, instance.load_percentage, self._threshold, alert.since)
            log.info("Critical load cleared: %s:%s at %.2f", *key, instance.load_percentage)
            self._emit("alert.cleared", alert)

    def _emit(self, event: AlertEvent, alert: Alert) -> None:
        if not self.deliver_for((alert.service_name, alert.instance_id)):
            return
        at = self._now()
        for sink in self._sinks:
            try:
                sink(event, alert, at)
            except Exception:  # a broken sink must not stop the others or the registry
                log.exception("Alert sink %r failed", sink)
