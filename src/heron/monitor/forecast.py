"""Forecast: in how many days a storage pool, the cluster's memory or its CPU is full.

The method, and why
-------------------
The input is the hourly rollups of the history (their averages): over the default window of
30 days that is at most 720 points per resource, read from every node in one query each, and
an hour's average already smooths the 10 s noise a trend does not care about.

The trend is an ordinary least-squares line through the *use* (bytes or cores in use), not
through the free space or the share in use: a disk added to a pool or a node added to the
cluster changes the capacity, not the use, so the line is not broken by it; the capacity
that counts is the latest one.

The bounds come from the line's prediction interval (90 %, Student's t): the earliest day is
when the interval's upper edge reaches the capacity, the estimate when the line does, the
latest when the lower edge does. Noise around the line widens the interval, and so the span
between the bounds. Hourly residuals are not independent (a daily cycle, a backup every
night), which would make a plain interval far too narrow; the variance of the line's
estimates is inflated by the lag-1 autocorrelation of the residuals ((1 + r) / (1 - r), the
AR(1) correction, with the degrees of freedom reduced likewise), so a cycle widens the
bounds instead of passing for certainty.

A robust fit (Theil-Sen, the median of pairwise slopes) would resist outliers better, but
gives no interval without resampling; hourly averages have few outliers, and least squares
gives the interval in closed form.

Storage pools also lose data in steps (volumes deleted, a cleanup): a fall of the use between
two hours larger than both `STEP_SIGMAS` times the usual hourly change and `STEP_SHARE` of
the capacity starts a new level, and the line keeps one slope with a level per segment, so a
cleanup a week ago neither hides the growth since nor counts as shrinking. Rises stay in the
fit: a volume created or an image imported is the growth being forecast. Memory and CPU are
not split so (their daily cycles would pass for steps); their cycles widen the bounds.

Answers
-------
- `growing`: the slope is above zero beyond its own uncertainty; days until full with bounds
  (`days_high` None: the lower edge does not reach the capacity within `HORIZON_DAYS`).
- `not_growing`: flat or shrinking use, or growth that the noise cannot tell from none.
- `full`: in use already reaches the capacity.
- `not_enough_history`: fewer than `MIN_POINTS` hourly points, or less than `MIN_SPAN_HOURS`
  between the first and the last (a day, so that a daily cycle is not read as a trend), or
  no capacity measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Literal

import numpy as np

from heron.monitor.query import parse_key

STEP = 3600  # the hourly rollups
WINDOW_DAYS = 30
MIN_POINTS = 12
MIN_SPAN_HOURS = 24
HORIZON_DAYS = 5 * 365
CONFIDENCE = 0.90
STEP_SIGMAS = 8.0
STEP_SHARE = 0.05
DAY = 86400.0

Status = Literal["growing", "not_growing", "full", "not_enough_history"]


@dataclass(frozen=True)
class Forecast:
    status: Status
    capacity: float | None  # the latest capacity
    used: float | None  # the latest use
    growth_per_day: float | None
    days: float | None  # the estimate
    days_low: float | None  # the earliest it may be full
    days_high: float | None  # the latest (None while growing: beyond HORIZON_DAYS)
    history_hours: float  # between the first and the last point fitted
    steps: int = 0  # falls of the use taken as new levels


def t_quantile(p: float, df: float) -> float:
    """Student's t quantile by the Cornish-Fisher expansion around the normal one (within
    0.005 of the exact value from 3 degrees of freedom on)."""
    z = NormalDist().inv_cdf(p)
    g = (
        (z**3 + z) / 4,
        (5 * z**5 + 16 * z**3 + 3 * z) / 96,
        (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
        (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160,
    )
    return z + sum(term / df ** (i + 1) for i, term in enumerate(g))


def forecast(
    times: np.ndarray,
    used: np.ndarray,
    capacity: np.ndarray,
    now: float,
    levels: bool = False,
) -> Forecast:
    """Days until `used` reaches the latest `capacity`, from points at `times` (seconds;
    NaN where nothing was measured). `levels`: falls of the use start new levels (pools)."""
    times, used, capacity = (np.asarray(a, dtype=np.float64) for a in (times, used, capacity))
    known = np.isfinite(used) & np.isfinite(times)
    x, y = (times[known] - now) / DAY, used[known]
    caps = capacity[np.isfinite(capacity)]
    cap = float(caps[-1]) if caps.size else None
    last = float(y[-1]) if y.size else None
    span = float((x[-1] - x[0]) * 24) if y.size else 0.0

    def answer(status: Status, **more: Any) -> Forecast:
        fields: dict[str, Any] = {
            "growth_per_day": None, "days": None, "days_low": None, "days_high": None,
            "steps": 0, **more,
        }  # fmt: skip
        return Forecast(status, cap, last, history_hours=span, **fields)

    if cap is None or cap <= 0 or y.size < MIN_POINTS or span < MIN_SPAN_HOURS:
        return answer("not_enough_history")
    segment = _segments(y, cap) if levels else np.zeros(y.size, dtype=int)
    fit = _fit(x, y, segment)
    if fit is None:
        return answer("not_enough_history")
    steps = int(segment[-1])
    if last is not None and last >= cap:
        return answer("full", growth_per_day=fit.slope, days=0.0, days_low=0.0, days_high=0.0)
    if fit.slope <= 0 or fit.slope <= fit.q * fit.slope_se:
        return answer("not_growing", growth_per_day=fit.slope, steps=steps)
    days = _first(lambda d: fit.at(d) >= cap)
    low = _first(lambda d: fit.at(d) + fit.q * fit.se(d) >= cap)
    high = _first(lambda d: fit.at(d) - fit.q * fit.se(d) >= cap)
    return answer(
        "growing", growth_per_day=fit.slope, days=days, days_low=low, days_high=high, steps=steps
    )


def _segments(y: np.ndarray, capacity: float) -> np.ndarray:
    """Each point's level: a fall larger than the usual change (and than a share of the
    capacity) starts the next."""
    change = np.diff(y)
    if change.size < 2:
        return np.zeros(y.size, dtype=int)
    usual = 1.4826 * float(np.median(np.abs(change - np.median(change))))
    threshold = max(STEP_SIGMAS * usual, STEP_SHARE * capacity)
    falls = change < -threshold
    return np.concatenate([[0], np.cumsum(falls)]).astype(int)


@dataclass
class _Fit:
    slope: float
    level: float  # of the last segment, at day 0 (now)
    s: float  # residual standard deviation
    inflate: float  # the autocorrelation's factor on the estimates' variance
    n_last: int  # points in the last segment
    x_mean: float  # their mean day
    sxx: float
    q: float  # the t quantile of the interval
    slope_se: float = field(init=False)

    def __post_init__(self) -> None:
        self.slope_se = self.s * math.sqrt(self.inflate / self.sxx)

    def at(self, day: float) -> float:
        return self.level + self.slope * day

    def se(self, day: float) -> float:
        """Standard error of an hourly value `day` days from now."""
        spread = 1 / self.n_last + (day - self.x_mean) ** 2 / self.sxx
        return self.s * math.sqrt(1 + self.inflate * spread)


def _fit(x: np.ndarray, y: np.ndarray, segment: np.ndarray) -> _Fit | None:
    """Least squares with one slope and a level per segment; None if too few points remain
    to judge the noise."""
    xc, yc = x.copy(), y.copy()
    for k in np.unique(segment):
        inside = segment == k
        xc[inside] -= x[inside].mean()
        yc[inside] -= y[inside].mean()
    sxx = float(np.sum(xc**2))
    if sxx <= 0:
        return None
    slope = float(np.sum(xc * yc) / sxx)
    residuals = yc - slope * xc
    groups = int(segment[-1]) + 1
    df = y.size - groups - 1
    if df < 3:
        return None
    s = math.sqrt(float(np.sum(residuals**2)) / df)
    r = _lag1(residuals, segment)
    inflate = (1 + r) / (1 - r)
    df_eff = max(3.0, y.size / inflate - groups - 1)
    last = segment == segment[-1]
    x_mean = float(x[last].mean())
    level = float(y[last].mean()) - slope * x_mean
    q = t_quantile((1 + CONFIDENCE) / 2, df_eff)
    return _Fit(slope, level, s, inflate, int(last.sum()), x_mean, sxx, q)


def _lag1(residuals: np.ndarray, segment: np.ndarray) -> float:
    """The lag-1 autocorrelation of the residuals within segments, kept to [0, 0.98]."""
    same = segment[1:] == segment[:-1]
    a, b = residuals[:-1][same], residuals[1:][same]
    denominator = float(np.sum(residuals**2))
    if a.size == 0 or denominator <= 0:
        return 0.0
    return min(0.98, max(0.0, float(np.sum(a * b)) / denominator))


def _first(reached: Callable[[float], bool]) -> float | None:
    """The first day from now on which `reached` holds (it holds from then on), to the
    hour; None if not within HORIZON_DAYS."""
    if reached(0.0):
        return 0.0
    if not reached(HORIZON_DAYS):
        return None
    low, high = 0.0, float(HORIZON_DAYS)
    while high - low > 1 / 24:
        middle = (low + high) / 2
        low, high = (low, middle) if reached(middle) else (middle, high)
    return round(high, 2)


# -- the cluster's resources from merged history answers -------------------------------------

# What is read (GET /metrics/history, each over every node) for a forecast.
POOL_SIZE = "heron_pool_size_bytes"
POOL_FREE = "heron_pool_free_bytes"
DISK_SIZE = "heron_ardfs_disk_size_bytes"
DISK_FREE = "heron_ardfs_disk_free_bytes"
MEMORY_TOTAL = "node_memory_MemTotal_bytes"
VM_MEMORY = "libvirt_domain_info_memory_usage_bytes"
CPU = "node_cpu_seconds_total"
READ = (POOL_SIZE, POOL_FREE, DISK_SIZE, DISK_FREE, MEMORY_TOTAL, VM_MEMORY, CPU)
IDLE = ("idle", "iowait")  # CPU time that is not work (as the overview's chart counts it)

Answer = Mapping[str, Any]


@dataclass(frozen=True)
class PoolInfo:
    """What the forecast needs of a pool's definition."""

    name: str
    shared: bool
    ardfs: bool = False
    share: float = 1.0  # ardfs: the part of the disks' space volumes can fill
    disks: frozenset[str] = frozenset()  # ardfs: its disks now (their ids)


@dataclass(frozen=True)
class Resource:
    kind: Literal["pool", "memory", "cpu"]
    name: str
    unit: Literal["bytes", "cores"]
    forecast: Forecast
    node: str | None = None  # a local pool: the node whose part this is


def grid(start: float, end: float) -> np.ndarray:
    first = math.floor(start / STEP) * STEP
    return np.arange(first, end, STEP, dtype=np.float64)


def resources(
    answers: Mapping[str, Answer],
    pools: Sequence[PoolInfo],
    nodes: Collection[str],
    start: float,
    end: float,
    now: float,
) -> list[Resource]:
    """Every pool (a local one per node), the memory and the CPU, from the merged answers
    of the metrics in READ over [start, end). `nodes`: the cluster's nodes now (one that is
    down still counts with its last values; one gone from the cluster no more)."""
    times = grid(start, end)
    columns = {metric: _columns(answers.get(metric), times) for metric in READ}
    found = []
    for pool in pools:
        found += _pool(pool, columns, times, now)
    found.append(Resource("memory", "memory", "bytes", _memory(columns, nodes, times, now)))
    found.append(Resource("cpu", "cpu", "cores", _cpu(columns, nodes, times, now)))
    return found


Column = tuple[dict[str, str], np.ndarray]


def _columns(answer: Answer | None, times: np.ndarray) -> list[Column]:
    """Each series of a merged answer as (labels, averages on the grid, NaN where none)."""
    if not answer:
        return []
    index = {float(t): i for i, t in enumerate(times)}
    found = []
    for series in answer.get("series", []):
        values = np.full(times.size, np.nan)
        for t, _low, avg, _high in series["points"]:
            i = index.get(float(t))
            if i is not None and avg is not None:
                values[i] = avg
        found.append((parse_key(series["key"])[1], values))
    return found


def _filled(values: np.ndarray, carry: bool) -> np.ndarray:
    """Gaps between measured points bridged by a straight line; the last value carried to
    the end when `carry` (a member that is down for now)."""
    known = np.flatnonzero(np.isfinite(values))
    if known.size == 0:
        return values
    out = values.copy()
    end = values.size if carry else known[-1] + 1
    span = np.arange(known[0], end)
    out[span] = np.interp(span, known, values[known])
    return out


def _total(columns: Sequence[np.ndarray], size: int) -> np.ndarray:
    """The sum at each point of what is known there; NaN where nothing is."""
    if not columns:
        return np.full(size, np.nan)
    stacked = np.vstack(columns)
    sums = np.nansum(stacked, axis=0)
    return np.where(np.isfinite(stacked).any(axis=0), sums, np.nan)


def _pool(
    pool: PoolInfo, columns: Mapping[str, list[Column]], times: np.ndarray, now: float
) -> list[Resource]:
    def of(metric: str) -> list[Column]:
        return [(labels, v) for labels, v in columns[metric] if labels.get("pool") == pool.name]

    if pool.ardfs:
        # Each member's disks, summed; then what volumes can fill of that.
        free = {(lb.get("node"), lb.get("disk")): v for lb, v in of(DISK_FREE)}
        sizes, used = [], []
        for labels, size in of(DISK_SIZE):
            left = free.get((labels.get("node"), labels.get("disk")))
            if left is None:
                continue
            carry = labels.get("disk") in pool.disks
            sizes.append(_filled(size, carry))
            used.append(_filled(size - left, carry))
        result = forecast(
            times,
            _total(used, times.size) * pool.share,
            _total(sizes, times.size) * pool.share,
            now,
            levels=True,
        )
        return [Resource("pool", pool.name, "bytes", result)]
    left_on = {labels.get("node"): v for labels, v in of(POOL_FREE)}
    per_node = {
        labels.get("node"): (size, size - left_on[labels.get("node")])
        for labels, size in of(POOL_SIZE)
        if labels.get("node") in left_on
    }
    if pool.shared or not per_node:
        # Every node sees the same pool: their views averaged (one may miss an hour).
        sizes = [size for size, _ in per_node.values()] or [np.full(times.size, np.nan)]
        used = [u for _, u in per_node.values()] or [np.full(times.size, np.nan)]
        result = forecast(times, _mean(used), _mean(sizes), now, levels=True)
        return [Resource("pool", pool.name, "bytes", result)]
    return [
        Resource("pool", pool.name, "bytes", forecast(times, u, size, now, levels=True), node)
        for node, (size, u) in sorted(per_node.items(), key=lambda item: str(item[0]))
    ]


def _mean(columns: Sequence[np.ndarray]) -> np.ndarray:
    stacked = np.vstack(columns)
    known = np.isfinite(stacked)
    sums = np.where(known, stacked, 0).sum(axis=0)
    counts = known.sum(axis=0)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _memory(
    columns: Mapping[str, list[Column]], nodes: Collection[str], times: np.ndarray, now: float
) -> Forecast:
    """Host RAM the VMs' QEMUs hold, against the nodes' RAM."""
    total = _total(
        [_filled(v, labels.get("node") in nodes) for labels, v in columns[MEMORY_TOTAL]],
        times.size,
    )
    # A VM not measured in an hour was not running: it held nothing.
    vms = [v for _, v in columns[VM_MEMORY]]
    used = np.where(np.isfinite(total), np.nan_to_num(_total(vms, times.size)), np.nan)
    return forecast(times, used, total, now)


def _cpu(
    columns: Mapping[str, list[Column]], nodes: Collection[str], times: np.ndarray, now: float
) -> Forecast:
    """Cores busy (CPU time in any mode but idle and iowait, per second) against the cores
    (CPU time in all modes, per second)."""
    all_modes: dict[str, list[np.ndarray]] = {}
    idle: dict[str, list[np.ndarray]] = {}
    for labels, values in columns[CPU]:
        node = labels.get("node", "")
        all_modes.setdefault(node, []).append(values)
        if labels.get("mode") in IDLE:
            idle.setdefault(node, []).append(values)
    cores, busy = [], []
    for node, modes in all_modes.items():
        total = _total(modes, times.size)
        resting = np.nan_to_num(_total(idle.get(node, []), times.size))
        carry = node in nodes
        cores.append(_filled(total, carry))
        busy.append(_filled(total - resting, carry))
    return forecast(times, _total(busy, times.size), _total(cores, times.size), now)
