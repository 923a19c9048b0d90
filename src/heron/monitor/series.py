"""Samples and series: Prometheus's data model, so `/metrics` and the history speak alike.

A series is a metric name and a set of labels (`node_cpu_seconds_total{mode="user"}`); its
key is that text, labels sorted. Names follow node_exporter and the libvirt exporter where
they mean the same thing, so existing dashboards and alert rules read Heron's series.
A counter's history is kept as its rate per second (what a chart or a rule wants; a raw
counter restarts with its process), a gauge's as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["counter", "gauge"]
Labels = tuple[tuple[str, str], ...]


def labels_of(**labels: str) -> Labels:
    return tuple(sorted(labels.items()))


def series_key(name: str, labels: Labels) -> str:
    if not labels:
        return name
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return f"{name}{{{inner}}}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Labels
    value: float

    @property
    def key(self) -> str:
        return series_key(self.name, self.labels)


@dataclass(frozen=True)
class Metric:
    name: str
    kind: Kind
    help: str
