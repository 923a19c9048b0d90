"""The live view: one object's key metrics every second, in memory, for the last 15 minutes.

The history (recorder.py) keeps every series every 10 s on disk. A person watching a chart
wants more: while someone watches an object (a node, a VM), the node that runs it samples
that object's key metrics each second into a ring of the last `POINTS` seconds. The first
request starts the watch; each request keeps it going; `LINGER` seconds after the last one
the watch stops and its ring is dropped, so that live sampling costs only what is watched.

The samples come from the collectors of monitor/collect (a `Sampler` per object, made by the
agent), counters become rates as the history's do (recorder.Rates), and only the series of
`LIVE_METRICS` are kept. Each watched object is sampled in its own task with a bound
(`timeout`): a hung QEMU misses its own seconds, never another object's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from array import array
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from heron.monitor.collect.node import collect_node
from heron.monitor.collect.vm import ProcessReads, VmProbe, collect_vms
from heron.monitor.recorder import Rates
from heron.monitor.series import Kind, Sample

log = logging.getLogger(__name__)

STEP = 1.0  # seconds between live points
POINTS = 900  # 15 minutes of them
LINGER = 300.0  # seconds a watch lasts after the last request for it
TIMEOUT = 0.8  # an object's bound per second: under the step, so the seconds stay on grid
# A VM's QMP part's bound, under TIMEOUT: a hung QEMU's second still has what /proc tells.
VM_TIMEOUT = 0.6
# Watches a node keeps at once: a signed-in user asking for every VM must not make the node
# sample all of them each second (a VM's second costs about what its 10 s round does).
MAX_WATCHES = 32

# What the charts of a node and of a VM draw (web/src/charts.ts), nothing more.
LIVE_METRICS = frozenset(
    {
        "node_cpu_seconds_total",
        "node_load1",
        "node_load5",
        "node_load15",
        "node_memory_MemTotal_bytes",
        "node_memory_MemAvailable_bytes",
        "node_disk_read_bytes_total",
        "node_disk_written_bytes_total",
        "node_network_receive_bytes_total",
        "node_network_transmit_bytes_total",
        "libvirt_domain_info_cpu_time_seconds_total",
        "libvirt_domain_info_cpu_ready_seconds_total",
        "libvirt_domain_info_memory_usage_bytes",
        "libvirt_domain_info_maximum_memory_bytes",
        "libvirt_domain_memory_stats_actual_balloon_bytes",
        "libvirt_domain_block_stats_read_bytes_total",
        "libvirt_domain_block_stats_write_bytes_total",
        "libvirt_domain_interface_stats_receive_bytes_total",
        "libvirt_domain_interface_stats_transmit_bytes_total",
    }
)

Sampler = Callable[[], Awaitable[list[Sample]]]


class NotHere(Exception):
    """The object is not on this node (a VM that runs elsewhere or not at all)."""


class TooMany(Exception):
    """The node watches as many objects as it may: the request starts no other."""


def parse_object(text: str) -> tuple[str, str]:
    """ "node:NAME" or "vm:ID" -> (kind, name); ValueError for anything else."""
    kind, sep, name = text.partition(":")
    if not sep or kind not in ("node", "vm") or not name or "/" in name:
        raise ValueError("must be node:NAME or vm:ID")
    return kind, name


class Ring:
    """The last `size` points (time, series key -> value), oldest first. Compact: each point
    keeps its values in an array, and shares its tuple of keys with the point before when
    they are the same (as they are second after second): a few hundred kB for 900 points of
    30 series."""

    def __init__(self, size: int = POINTS):
        self.points: deque[tuple[float, tuple[str, ...], array[float]]] = deque(maxlen=size)

    def add(self, t: float, values: dict[str, float]) -> None:
        if self.points and t <= self.points[-1][0]:
            return  # a clock stepped back: the times stay increasing
        keys = tuple(sorted(values))
        if self.points and self.points[-1][1] == keys:
            keys = self.points[-1][1]
        self.points.append((t, keys, array("d", (values[k] for k in keys))))

    def since(self, t: float | None) -> list[tuple[float, dict[str, float]]]:
        """The points after time `t` (all of them when None)."""
        found = []
        for point in reversed(self.points):
            if t is not None and point[0] <= t:
                break
            found.append(point)
        return [(at, dict(zip(keys, values, strict=True))) for at, keys, values in reversed(found)]


def as_series(points: list[tuple[float, dict[str, float]]]) -> list[dict[str, Any]]:
    """Points by time -> series by key, each with its [time, value] points."""
    series: dict[str, list[list[float]]] = {}
    for t, values in points:
        for key, value in values.items():
            series.setdefault(key, []).append([t, value])
    return [{"key": key, "points": series[key]} for key in sorted(series)]


@dataclass
class Watch:
    sampler: Sampler
    asked: float  # monotonic time of the last request
    ring: Ring = field(default_factory=Ring)
    rates: Rates = field(default_factory=Rates)
    task: asyncio.Task[None] | None = None


class Live:
    """The watched objects of this node. `resolve` gives an object's sampler, or raises
    NotHere; `kinds` is the catalog's kind of each metric (counters become rates)."""

    def __init__(
        self,
        resolve: Callable[[str, str], Sampler],
        kinds: Mapping[str, Kind],
        step: float = STEP,
        linger: float = LINGER,
        timeout: float = TIMEOUT,
        size: int = POINTS,
        most: int = MAX_WATCHES,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.resolve = resolve
        self.kinds = kinds
        self.step = step
        self.linger = linger
        self.timeout = timeout
        self.size = size
        self.most = most
        self.clock = clock
        self.watches: dict[str, Watch] = {}

    def ask(self, obj: str, since: float | None = None) -> list[tuple[float, dict[str, float]]]:
        """The object's points after `since`; the first request starts watching it (and finds
        nothing yet, or what is left of a watch that has not expired), each keeps it going."""
        kind, name = parse_object(obj)
        watch = self.watches.get(obj)
        if watch is None:
            if len(self.watches) >= self.most:
                raise TooMany(f"this node watches {self.most} objects already; try later")
            watch = Watch(self.resolve(kind, name), self.clock(), Ring(self.size))
            self.watches[obj] = watch
            watch.task = asyncio.get_running_loop().create_task(
                self._follow(obj, watch), name=f"live {obj}"
            )
        watch.asked = self.clock()
        return watch.ring.since(since)

    def expire(self) -> list[str]:
        """Stop the watches nobody asked for within `linger`; their names."""
        now = self.clock()
        gone = [o for o, w in self.watches.items() if now - w.asked > self.linger]
        for obj in gone:
            watch = self.watches.pop(obj)
            if watch.task is not None:
                watch.task.cancel()
        return gone

    async def sample(self, watch: Watch, t: float) -> None:
        """One second of the watched object, kept in its ring (nothing when it overran)."""
        try:
            samples = await asyncio.wait_for(watch.sampler(), self.timeout)
        except Exception as exc:  # a hung or gone object misses this second, no more
            log.debug("live sample missed: %r", exc)
            return
        kept = [s for s in samples if s.name in LIVE_METRICS]
        counters = [s for s in kept if self.kinds.get(s.name) == "counter"]
        gauges = [(s.key, s.value) for s in kept if self.kinds.get(s.name) != "counter"]
        values = dict([*gauges, *watch.rates(t, counters)])
        if values:
            watch.ring.add(t, values)

    async def _follow(self, obj: str, watch: Watch) -> None:
        while self.watches.get(obj) is watch:
            await asyncio.sleep(self.step - time.time() % self.step)
            if self.clock() - watch.asked > self.linger:
                if self.watches.get(obj) is watch:
                    del self.watches[obj]  # nobody looks any more: the ring goes with it
                return
            await self.sample(watch, round(time.time() / self.step) * self.step)

    def stop(self) -> None:
        for watch in self.watches.values():
            if watch.task is not None:
                watch.task.cancel()
        self.watches.clear()


# -- what an object's second is made of -------------------------------------------------------


def node_sampler() -> Sampler:
    """This node's CPU, load, memory, disks and network (not its filesystems and pressure:
    not drawn live, and a statvfs per mount per second is not cheap)."""

    async def samples() -> list[Sample]:
        return await asyncio.to_thread(collect_node, filesystems=False, pressure=False)

    return samples


def vm_sampler(probe: Callable[[], VmProbe | None], timeout: float = VM_TIMEOUT) -> Sampler:
    """One VM's CPU, memory, disks and NICs through the VM collector, with a reader of its
    QEMU's /proc of its own (the 10 s round's reader is not held up or cut short by it).
    `probe` gives the VM's probe, None when it does not run here (any more)."""
    reads = ProcessReads(prune=False)

    async def samples() -> list[Sample]:
        found = probe()
        if found is None:
            raise NotHere("the VM does not run here")
        return (await collect_vms([found], timeout, reads)).samples

    return samples
