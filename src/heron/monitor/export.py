"""Samples in Prometheus's text exposition, written by prometheus_client."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric as Family

from heron.monitor.series import Metric, Sample


class _Samples:
    def __init__(self, samples: list[Sample], catalog: Mapping[str, Metric]):
        self.samples = samples
        self.catalog = catalog

    def collect(self) -> Iterator[Family]:
        families: dict[str, Family] = {}
        for sample in self.samples:
            metric = self.catalog.get(sample.name)
            if metric is None:
                continue
            family = families.get(sample.name)
            if family is None:
                # A counter's family is named without `_total`; its samples keep it.
                name = (
                    sample.name.removesuffix("_total") if metric.kind == "counter" else sample.name
                )
                family = families[sample.name] = Family(name, metric.help, metric.kind)
            family.add_sample(sample.name, dict(sample.labels), sample.value)
        yield from families.values()


def exposition(samples: list[Sample], catalog: Mapping[str, Metric]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Samples(samples, catalog))
    return generate_latest(registry)
