"""`GET /metrics`: the core's numbers in the Prometheus exposition format (prometheus-client).

The core counts with plain integers (`discovery.core.metrics`); `CoreCollector` turns them into
metric families only when Prometheus scrapes, and counts the registry's instances by status at
that moment, so nothing is kept up to date on the busy paths. Each app has its own
`CollectorRegistry` (several servers may run in one process, in tests) holding this collector and
prometheus-client's process, platform and garbage-collector collectors.

Every family is there from the first scrape: labels known up front (protocols, reasons, results,
events, outcomes) have their series at zero; the others show their HELP and TYPE lines.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from discovery.core.facade import DiscoveryCore
from discovery.core.metrics import Histogram
from discovery.core.model import HealthStatus

router = APIRouter(tags=["operations"])

#: The `outcome` label of webhook deliveries: delivered, given up after its tries, or dropped
#: from a full queue before it was tried.
WEBHOOK_OUTCOMES = ("delivered", "failed", "dropped")


def build_registry(core: DiscoveryCore) -> CollectorRegistry:
    """A registry with the core's metrics and the usual process_* and python_* families."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CoreCollector(core))
    # The default collectors read this process (/proc/self and the interpreter), whichever
    # registry holds them; they are shared objects, so one more registry costs nothing.
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    return registry


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics (text format, or OpenMetrics when the scraper asks for it)."""
    # async, like every route reading the core: the core belongs to the event loop's thread.
    registry: CollectorRegistry = request.app.state.metrics
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encoder(registry), media_type=content_type)


class CoreCollector(Collector):
    """The `discovery_*` families of one core, built at scrape time."""

    def __init__(self, core: DiscoveryCore) -> None:
        self._core = core

    def collect(self) -> Iterator[Metric]:
        core = self._core
        counts = core.metrics
        yield from self._instances()
        yield _counter("registrations", "Registrations accepted.", "protocol", counts.registrations)
        yield _counter("heartbeats", "Heartbeats accepted.", "protocol", counts.heartbeats)
        yield _counter(
            "unregistrations", "Unregistrations accepted.", "protocol", counts.unregistrations
        )
        yield _counter(
            "expirations",
            "Instances expired (ttl: removed; heartbeat_grace, stream_broken: turned unhealthy).",
            "reason",
            counts.expirations,
        )
        yield _counter("probes", "Health probes sent, by result.", "result", counts.probes)
        probe_time = HistogramMetricFamily(
            "discovery_probe_duration_seconds", "Time a health probe took.", labels=[]
        )
        _add_histogram(probe_time, [], counts.probe_duration)
        yield probe_time
        yield _gauge("watchers", "Open watch streams.", "protocol", core.watch_hub.open_watchers)
        resets = CounterMetricFamily(
            "discovery_watch_resets_total",
            "Reset snapshots sent instead of changes (slow watcher, or resume point gone).",
        )
        resets.add_metric([], counts.watch_resets)
        yield resets
        yield _counter("alerts", "Critical-load alerts raised and cleared.", "event", counts.alerts)
        yield _counter(
            "webhook_deliveries",
            "Alert notifications, by what became of them.",
            "outcome",
            self._webhook(),
        )
        yield self._requests()

    def _instances(self) -> Iterable[Metric]:
        instances = GaugeMetricFamily(
            "discovery_instances", "Registered instances.", labels=["service", "status"]
        )
        critical = GaugeMetricFamily(
            "discovery_critical_load_instances",
            "Instances at critical load.",
            labels=["service"],
        )
        for name, census in self._core.census().items():
            for status in HealthStatus:
                instances.add_metric([name, status.value], census.statuses[status])
            critical.add_metric([name], census.critical)
        return instances, critical

    def _webhook(self) -> dict[str, int]:
        sink = self._core.webhook
        if sink is None:
            return dict.fromkeys(WEBHOOK_OUTCOMES, 0)
        return {"delivered": sink.delivered, "failed": sink.failed, "dropped": sink.dropped}

    def _requests(self) -> Metric:
        family = HistogramMetricFamily(
            "discovery_request_duration_seconds",
            "Time taken to answer an API request (RPC method, or REST route template).",
            labels=["protocol", "method"],
        )
        for (protocol, method), histogram in list(self._core.metrics.requests.items()):
            _add_histogram(family, [protocol, method], histogram)
        return family


def _counter(name: str, doc: str, label: str, values: Mapping[str, int]) -> Metric:
    family = CounterMetricFamily(f"discovery_{name}_total", doc, labels=[label])
    for value, count in values.items():
        family.add_metric([value], count)
    return family


def _gauge(name: str, doc: str, label: str, values: Mapping[str, int]) -> Metric:
    family = GaugeMetricFamily(f"discovery_{name}", doc, labels=[label])
    for value, count in values.items():
        family.add_metric([value], count)
    return family


def _add_histogram(family: HistogramMetricFamily, labels: list[str], histogram: Histogram) -> None:
    """Add one histogram's series (its cumulative buckets, count and sum) to `family`."""
    buckets: list[tuple[str, float]] = []
    cumulative = 0
    for bound, count in zip(histogram.bounds, histogram.counts, strict=False):
        cumulative += count
        # floatToGoString carries no annotations; it spells bounds as Prometheus's own clients do.
        buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
    buckets.append(("+Inf", cumulative + histogram.counts[-1]))
    family.add_metric(labels, buckets, histogram.total)
