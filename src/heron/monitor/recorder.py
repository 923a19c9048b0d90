"""What a node does with each round of samples: keep the latest for `/metrics`, and write the
history: gauges as they are, counters as their rate per second since the round before."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping

from heron.monitor.series import Kind, Sample
from heron.monitor.store import Store


class Rates:
    """Counter samples to rates. The first sample of a series gives no rate; a counter that
    went down was reset (its process restarted) and counts from zero, as Prometheus's
    `rate` does. Series that stop being sampled are forgotten."""

    def __init__(self) -> None:
        self.last: dict[str, tuple[float, float]] = {}

    def __call__(self, t: float, counters: Iterable[Sample]) -> list[tuple[str, float]]:
        rates, seen = [], {}
        for sample in counters:
            key = sample.key
            seen[key] = (t, sample.value)
            before = self.last.get(key)
            if before is None or t <= before[0]:
                continue
            grown = sample.value - before[1]
            rates.append((key, (grown if grown >= 0 else sample.value) / (t - before[0])))
        self.last = seen
        return rates


class Recorder:
    def __init__(self, store: Store, kinds: Mapping[str, Kind]):
        self.store = store
        self.kinds = kinds
        self.rates = Rates()
        self.lock = threading.Lock()
        self.latest: list[Sample] = []
        self.latest_at = 0.0

    def record(self, t: float, samples: list[Sample]) -> dict[str, float]:
        """Keep the round; what was written to the history (series key -> value), which is
        also what the alert rules look at."""
        counters = [s for s in samples if self.kinds.get(s.name) == "counter"]
        gauges = [(s.key, s.value) for s in samples if self.kinds.get(s.name) != "counter"]
        values = dict([*gauges, *self.rates(t, counters)])
        self.store.append(t, values.items())
        with self.lock:
            self.latest, self.latest_at = samples, t
        return values

    def current(self) -> tuple[float, list[Sample]]:
        with self.lock:
            return self.latest_at, self.latest
