"""Samples in Prometheus's text exposition, written by prometheus_client.

Every sample carries `node`, the node that measured it, as the history's merged answers do:
Prometheus's own `instance` is only the address it scraped, and dashboards and alert rules
select and group by `node` (a VM's series say where it ran)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric as Family

from heron.monitor.series import Metric, Sample


class _Samples:
    def __init__(self, samples: list[Sample], catalog: Mapping[str, Metric], node: str | None):
        self.samples = samples
        self.catalog = catalog
        self.node = node

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
            labels = dict(sample.labels)
            if self.node is not None:
                labels["node"] = self.node
            family.add_sample(sample.name, labels, sample.value)
        yield from families.values()


def exposition(
    samples: list[Sample], catalog: Mapping[str, Metric], node: str | None = None
) -> bytes:
    """The samples of the catalog's metrics (others are left out), each labelled with
    `node` when given."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Samples(samples, catalog, node))
    return generate_latest(registry)
