"""The live view (heron.monitor.live): its ring of the last points, the watches a request
starts and keeps, their expiry and their number, and a sampler that hangs costing only its
own seconds."""

from __future__ import annotations

import asyncio

import pytest
from support import eventually

from heron.monitor.live import (
    LIVE_METRICS,
    Live,
    NotHere,
    Ring,
    Sampler,
    TooMany,
    Watch,
    as_series,
    parse_object,
)
from heron.monitor.series import Sample, labels_of

KINDS = {"node_cpu_seconds_total": "counter", "node_load1": "gauge"}


def test_the_ring_keeps_the_last_points_in_order() -> None:
    ring = Ring(size=3)
    for t in range(5):
        ring.add(float(t), {"x": t * 10.0})
    assert [t for t, _ in ring.since(None)] == [2.0, 3.0, 4.0]
    assert ring.since(2.0) == [(3.0, {"x": 30.0}), (4.0, {"x": 40.0})]
    assert ring.since(4.0) == []
    assert [t for t, _ in ring.since(-1.0)] == [2.0, 3.0, 4.0]


def test_the_ring_refuses_a_time_that_does_not_grow() -> None:
    ring = Ring()
    ring.add(5.0, {"x": 1.0})
    ring.add(5.0, {"x": 2.0})
    ring.add(4.0, {"x": 3.0})
    assert ring.since(None) == [(5.0, {"x": 1.0})]


def test_points_become_series_by_key() -> None:
    points = [(1.0, {"a": 1.0, "b": 2.0}), (2.0, {"a": 3.0})]
    assert as_series(points) == [
        {"key": "a", "points": [[1.0, 1.0], [2.0, 3.0]]},
        {"key": "b", "points": [[1.0, 2.0]]},
    ]


@pytest.mark.parametrize("text", ["", "node", "node:", "pool:x", "vm:a/b", ":x"])
def test_an_object_that_is_not_a_node_or_a_vm_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_object(text)


def test_an_object_names_its_kind() -> None:
    assert parse_object("vm:0123") == ("vm", "0123")
    assert parse_object("node:node1") == ("node", "node1")


def test_only_the_charts_metrics_are_kept() -> None:
    assert "node_cpu_seconds_total" in LIVE_METRICS
    assert "node_filesystem_size_bytes" not in LIVE_METRICS


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def counting(calls: list[str], name: str) -> Sampler:
    async def samples() -> list[Sample]:
        calls.append(name)
        return [
            Sample("node_cpu_seconds_total", labels_of(mode="user"), 2.0 * len(calls)),
            Sample("node_load1", (), 0.5),
            Sample("node_filesystem_size_bytes", (), 1.0),  # not drawn live: left out
        ]

    return samples


async def test_a_sample_keeps_gauges_and_the_rates_of_counters() -> None:
    calls: list[str] = []
    live = Live(lambda kind, name: counting(calls, name), KINDS)
    watch = live.watches.setdefault("node:n1", _watch(live, counting(calls, "n1")))
    await live.sample(watch, 10.0)
    await live.sample(watch, 11.0)
    assert watch.ring.since(None) == [
        (10.0, {"node_load1": 0.5}),
        (11.0, {"node_load1": 0.5, 'node_cpu_seconds_total{mode="user"}': 2.0}),
    ]


def _watch(live: Live, sampler: Sampler) -> Watch:
    return Watch(sampler, live.clock())


async def test_a_request_starts_a_watch_and_the_points_follow_each_second() -> None:
    calls: list[str] = []
    live = Live(lambda kind, name: counting(calls, name), KINDS, step=0.05)
    try:
        assert live.ask("node:n1") == []  # nothing yet: the watch starts now

        async def three() -> list[tuple[float, dict[str, float]]] | None:
            got = live.ask("node:n1")
            return got if len(got) >= 3 else None

        points = await eventually(three, 10, "three live points")
        times = [t for t, _ in points]
        assert times == sorted(set(times))
        newer = live.ask("node:n1", since=times[-2])
        assert newer[0][0] == times[-1]
        assert list(live.watches) == ["node:n1"]  # one watch however often it is asked
    finally:
        live.stop()


async def test_a_watch_nobody_asks_for_stops_and_its_ring_is_dropped() -> None:
    clock = Clock()
    calls: list[str] = []
    live = Live(lambda kind, name: counting(calls, name), KINDS, linger=300, clock=clock)
    try:
        live.ask("node:n1")
        clock.now += 200
        live.ask("vm:a")
        clock.now += 200  # node:n1 last asked 400 s ago, vm:a 200 s ago
        assert live.expire() == ["node:n1"]
        assert list(live.watches) == ["vm:a"]
        clock.now += 101
        assert live.expire() == ["vm:a"] and live.watches == {}
    finally:
        live.stop()


async def test_a_watch_that_expires_ends_its_own_sampling() -> None:
    clock = Clock()
    calls: list[str] = []
    live = Live(lambda kind, name: counting(calls, name), KINDS, step=0.02, linger=5, clock=clock)
    live.ask("node:n1")
    task = live.watches["node:n1"].task
    assert task is not None
    clock.now += 6
    await asyncio.wait_for(task, 5)
    assert live.watches == {}


async def test_an_object_not_here_is_refused_and_not_watched() -> None:
    def resolve(kind: str, name: str) -> Sampler:
        raise NotHere("elsewhere")

    live = Live(resolve, KINDS)
    with pytest.raises(NotHere):
        live.ask("vm:a")
    assert live.watches == {}


async def test_a_hung_object_misses_its_seconds_and_delays_no_other() -> None:
    calls: list[str] = []
    stuck = asyncio.Event()

    def resolve(kind: str, name: str) -> Sampler:
        if name == "hung":

            async def never() -> list[Sample]:
                await stuck.wait()
                return []

            return never
        return counting(calls, name)

    live = Live(resolve, KINDS, step=0.05, timeout=0.03)
    try:
        live.ask("vm:hung")
        live.ask("vm:fine")

        async def five() -> bool:
            return len(live.ask("vm:fine")) >= 5

        await eventually(five, 10, "five points of vm:fine")
        assert live.ask("vm:hung") == []
    finally:
        live.stop()


async def test_a_node_watches_so_many_objects_at_most() -> None:
    calls: list[str] = []
    live = Live(lambda kind, name: counting(calls, name), KINDS, most=2)
    try:
        live.ask("vm:a")
        live.ask("vm:b")
        with pytest.raises(TooMany):
            live.ask("vm:c")
        live.ask("vm:a")  # those watched are still answered
        assert sorted(live.watches) == ["vm:a", "vm:b"]
    finally:
        live.stop()
