"""What the server counts, as plain numbers: no metrics library on the hot paths.

Counting a heartbeat is one dict increment and timing a request one `bisect` into a fixed list
of buckets, so the busiest requests pay next to nothing for being measured. The exposition
(Prometheus text format, `GET /metrics`) is an adapter's job: it reads these numbers when it is
scraped (`gateway_rest.metrics`). Gauges that describe the registry (instances by status,
critical load) are not kept here at all: they are counted from the registry at scrape time.

Label values are fixed up front wherever they can be (protocols, expiry reasons, probe results,
alert events), so every series exists, at zero, from the start.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from discovery.core.model import HealthStatus, Instance

#: The `protocol` label: how a write or a watcher reached the core.
REST = "rest"
GRPC = "grpc"
KEEPALIVE = "keepalive"
SSE = "sse"
WRITE_PROTOCOLS = (REST, GRPC, KEEPALIVE)
WATCH_PROTOCOLS = (GRPC, SSE)

#: The `reason` label of expirations: the registration outlived its TTL and was removed; a
#: heartbeat-only instance went past its heartbeat grace and turned unhealthy; the KeepAlive
#: stream that kept an instance alive broke and it turned unhealthy.
TTL = "ttl"
HEARTBEAT_GRACE = "heartbeat_grace"
STREAM_BROKEN = "stream_broken"
EXPIRY_REASONS = (TTL, HEARTBEAT_GRACE, STREAM_BROKEN)

#: The `result` label of probes.
PASSED = "passed"
FAILED = "failed"
TIMED_OUT = "timed_out"
PROBE_RESULTS = (PASSED, FAILED, TIMED_OUT)

#: The `event` label of alerts.
ALERT_EVENTS = ("raised", "cleared")

#: Upper bounds (seconds) of request-duration buckets: API calls take microseconds to a few
#: milliseconds, writes that wait for the store longer.
REQUEST_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
#: Upper bounds (seconds) of probe-duration buckets: a probe takes up to the probe timeout.
PROBE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _zeros(labels: tuple[str, ...]) -> dict[str, int]:
    return dict.fromkeys(labels, 0)


class Histogram:
    """Observations counted into fixed buckets; `counts[i]` holds those in bucket `i` only
    (the last slot: above every bound). Not cumulative: the exposition adds them up."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count one observation (a bucket holds values up to and including its bound)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)


@dataclass(eq=False)
class Metrics:
    """Every counter and histogram of one core. Used from the core's event loop only."""

    registrations: dict[str, int] = field(default_factory=lambda: _zeros(WRITE_PROTOCOLS))
    heartbeats: dict[str, int] = field(default_factory=lambda: _zeros(WRITE_PROTOCOLS))
    unregistrations: dict[str, int] = field(default_factory=lambda: _zeros(WRITE_PROTOCOLS))
    expirations: dict[str, int] = field(default_factory=lambda: _zeros(EXPIRY_REASONS))
    probes: dict[str, int] = field(default_factory=lambda: _zeros(PROBE_RESULTS))
    probe_duration: Histogram = field(default_factory=lambda: Histogram(PROBE_BUCKETS))
    watch_resets: int = 0
    alerts: dict[str, int] = field(default_factory=lambda: _zeros(ALERT_EVENTS))
    #: Request durations by (protocol, method): an RPC method name or a REST route template.
    requests: dict[tuple[str, str], Histogram] = field(default_factory=dict)

    def request_histogram(self, protocol: str, method: str) -> Histogram:
        """The duration histogram of one kind of request, made on first use. Adapters look
        theirs up once and keep it, so a request costs no lookup."""
        key = (protocol, method)
        histogram = self.requests.get(key)
        if histogram is None:
            histogram = self.requests[key] = Histogram(REQUEST_BUCKETS)
        return histogram

    def alert(self, event: str, *_: object) -> None:
        """An `AlertBook` sink: count a raise (`alert.raised`) or a clear (`alert.cleared`)."""
        self.alerts[event.removeprefix("alert.")] += 1


@dataclass(frozen=True, slots=True)
class ServiceCensus:
    """How many instances of one service are in each status, and how many at critical load."""

    statuses: Mapping[HealthStatus, int]
    critical: int


def census(services: Mapping[str, Sequence[Instance]]) -> dict[str, ServiceCensus]:
    """Count every service's instances by status (every status present, zeros included)."""
    healthy_status, unhealthy_status = HealthStatus.HEALTHY, HealthStatus.UNHEALTHY
    counted: dict[str, ServiceCensus] = {}
    for name, instances in services.items():
        # Identity tests, not a dict keyed by status: an Enum hashes in Python code, and this
        # runs for every instance on every scrape.
        healthy = unhealthy = critical = 0
        for instance in instances:
            status = instance.status
            if status is healthy_status:
                healthy += 1
            elif status is unhealthy_status:
                unhealthy += 1
            critical += instance.critical_load
        statuses = {
            HealthStatus.UNKNOWN: len(instances) - healthy - unhealthy,
            healthy_status: healthy,
            unhealthy_status: unhealthy,
        }
        counted[name] = ServiceCensus(statuses, critical)
    return counted
