"""A history query: read one node's store, and merge what several nodes answered.

A node's series carry no `node` label in its own store (everything there is its own); when
answers are merged the label is added, except to series of a VM (those with a `vm` label):
a VM's history is one series whichever nodes it ran on, so it follows the VM across
migrations and HA restarts.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from heron.monitor.series import Labels, series_key
from heron.monitor.store import HOUR, RESOLUTIONS, Store, aggregate, pick_resolution

Answer = dict[str, Any]


def parse_key(key: str) -> tuple[str, dict[str, str]]:
    """`name{a="x",b="y"}` -> name, labels (the keys this project writes: no `",` in values)."""
    name, _, rest = key.partition("{")
    labels = {}
    for part in rest.rstrip("}").split('",') if rest else []:
        label, _, value = part.partition('="')
        labels[label] = value.rstrip('"').replace('\\"', '"').replace("\\\\", "\\")
    return name, labels


def read(
    store: Store,
    name: str,
    labels: Labels,
    start: float,
    end: float,
    step: float | None = None,
    now: float | None = None,
) -> Answer:
    """Points over [start, end): of the finest resolution that still holds `start` and gives
    at most 1500 points; or, given a `step`, of the coarsest one still as fine, put in
    buckets of `step` seconds (min of the minimums, mean, max of the maximums)."""
    now = time.time() if now is None else now
    if step is None:
        resolution = pick_resolution(start, end, now)
    else:
        held = [r for r in RESOLUTIONS if now - start <= r.keep] or [HOUR]
        resolution = max((r for r in held if r.step <= step), key=lambda r: r.step, default=held[0])
    per = max(1, int((step or resolution.step) // resolution.step))
    found = store.read(name, labels, start, end, resolution)
    series = []
    for key, points in sorted(found.items()):
        times, values = points.times, points.values
        if per > 1:
            times, values = _buckets(times, values, per)
        if np.isnan(values).all():
            continue
        rows = np.column_stack([times, values])
        series.append({"key": key, "points": [[_num(x) for x in row] for row in rows]})
    return {
        "resolution": resolution.name,
        "step": resolution.step * per,
        "start": start,
        "end": end,
        "series": series,
    }


def _buckets(times: np.ndarray, values: np.ndarray, per: int) -> tuple[np.ndarray, np.ndarray]:
    count = math.ceil(len(times) / per)
    padded = np.full((count * per, 3), np.nan)
    padded[: len(values)] = values
    shaped = padded.reshape(count, per, 3)
    return times[::per], aggregate(shaped[..., 0], shaped[..., 1], shaped[..., 2])


def _num(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def merge(answers: dict[str, Answer]) -> Answer:
    """Node -> its answer, as one answer (see the module's docstring)."""
    merged: dict[str, dict[float, list[float | None]]] = {}
    first = next(iter(answers.values()))
    for node, answer in sorted(answers.items()):
        for series in answer["series"]:
            name, labels = parse_key(series["key"])
            if "vm" not in labels:
                labels["node"] = node
            key = series_key(name, tuple(sorted(labels.items())))
            into = merged.setdefault(key, {})
            for t, *value in series["points"]:
                if value[1] is not None and (into.get(t) is None or into[t][1] is None):
                    into[t] = value
                else:
                    into.setdefault(t, value)
    return {
        **{k: first[k] for k in ("resolution", "step", "start", "end")},
        "series": [
            {"key": key, "points": [[t, *v] for t, v in sorted(points.items())]}
            for key, points in sorted(merged.items())
        ],
    }
