"""Reading `GET /metrics` in tests: the families and samples, parsed by prometheus-client."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families


@dataclass
class Scrape:
    """One parsed answer of `/metrics`."""

    families: dict[str, Metric]

    def value(self, sample: str, **labels: str) -> float:
        """The one sample named `sample` whose labels include `labels` (AssertionError if
        there is not exactly one)."""
        found = [
            s.value
            for family in self.families.values()
            for s in family.samples
            if s.name == sample and labels.items() <= s.labels.items()
        ]
        assert len(found) == 1, f"{sample}{labels}: {len(found)} samples"
        return found[0]

    def labels(self, family: str) -> list[dict[str, str]]:
        """The label sets of every sample of `family`."""
        return [dict(s.labels) for s in self.families[family].samples]


async def scrape(client: httpx.AsyncClient) -> Scrape:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    return Scrape(families)


async def counted(client: httpx.AsyncClient, sample: str, **labels: str) -> float:
    """The current value of one sample."""
    return (await scrape(client)).value(sample, **labels)
