"""The forecast on synthetic hourly series: linear growth is found with bounds around the
true day, noise widens them, flat or shrinking use is not growing, too little history says
so, and steps (capacity added, data deleted) do not break the trend."""

import numpy as np
import pytest

from heron.monitor import forecast as fc
from heron.monitor.forecast import PoolInfo, forecast, resources, t_quantile
from heron.monitor.series import series_key

NOW = 1_800_000_000.0
HOUR = 3600.0
TIB = 2.0**40


def hours(count: int) -> np.ndarray:
    """`count` hourly points ending now."""
    return NOW - HOUR * np.arange(count)[::-1]


def linear(
    count: int, start: float, per_day: float, noise: float = 0.0, seed: int = 1
) -> np.ndarray:
    days = (hours(count) - NOW) / 86400
    values = start + per_day * (days - days[0])
    return values + np.random.default_rng(seed).normal(0, noise, count) if noise else values


def test_t_quantiles_are_close_to_the_tables() -> None:
    # Student's t, 0.95 quantile: 3 df 2.353, 10 df 1.812, 30 df 1.697; normal 1.645.
    for df, exact in ((3, 2.353), (10, 1.812), (30, 1.697), (1e9, 1.645)):
        assert t_quantile(0.95, df) == pytest.approx(exact, abs=0.005)


def test_linear_growth_gives_the_day_within_its_bounds() -> None:
    # 30 days from 40 % to 70 % of 10 TiB (1 % a day): full 30 days from now.
    used = linear(720, 4 * TIB, 0.1 * TIB, noise=0.005 * TIB)
    result = forecast(hours(720), used, np.full(720, 10 * TIB), NOW)
    assert result.status == "growing"
    assert result.growth_per_day == pytest.approx(0.1 * TIB, rel=0.02)
    assert result.days == pytest.approx(30, abs=0.5)
    assert result.days_low is not None and result.days_high is not None
    assert result.days_low <= 30 <= result.days_high
    assert result.days_low < result.days < result.days_high
    assert result.capacity == 10 * TIB
    assert result.history_hours == 719


def test_noise_widens_the_bounds() -> None:
    capacity = np.full(720, 10 * TIB)
    quiet = forecast(hours(720), linear(720, 4 * TIB, 0.1 * TIB, 0.005 * TIB), capacity, NOW)
    noisy = forecast(hours(720), linear(720, 4 * TIB, 0.1 * TIB, 0.2 * TIB), capacity, NOW)
    assert noisy.status == quiet.status == "growing"
    assert noisy.days_low is not None and noisy.days_high is not None
    assert quiet.days_low is not None and quiet.days_high is not None
    assert noisy.days_low < quiet.days_low and noisy.days_high > quiet.days_high
    assert noisy.days_low <= 30 <= noisy.days_high


def test_a_daily_cycle_widens_the_bounds_more_than_the_same_spread_of_white_noise() -> None:
    # Autocorrelated residuals carry less information than as many independent ones.
    t = hours(720)
    cycle = 0.2 * TIB * np.sin(2 * np.pi * (t % 86400) / 86400)
    capacity = np.full(720, 10 * TIB)
    cyclic = forecast(t, linear(720, 4 * TIB, 0.1 * TIB) + cycle, capacity, NOW)
    white = forecast(t, linear(720, 4 * TIB, 0.1 * TIB, 0.2 * TIB / np.sqrt(2)), capacity, NOW)
    assert cyclic.days_low is not None and white.days_low is not None
    assert cyclic.days_low < white.days_low
    assert cyclic.days_low <= 30 <= (cyclic.days_high or np.inf)


@pytest.mark.parametrize("per_day", [0.0, -0.05 * TIB])
def test_flat_or_shrinking_use_is_not_growing(per_day: float) -> None:
    used = linear(720, 5 * TIB, per_day, noise=0.05 * TIB, seed=7)
    result = forecast(hours(720), used, np.full(720, 10 * TIB), NOW)
    assert result.status == "not_growing"
    assert result.days is None and result.days_low is None and result.days_high is None


def test_growth_the_noise_hides_is_not_growing() -> None:
    used = linear(48, 5 * TIB, 0.001 * TIB, noise=0.5 * TIB)
    result = forecast(hours(48), used, np.full(48, 10 * TIB), NOW)
    assert result.status == "not_growing"


@pytest.mark.parametrize(
    ("count", "gaps"),
    [(11, False), (20, False), (60, True)],
    ids=["11 points", "19 hours", "a day but 11 points measured"],
)
def test_too_little_history_says_so(count: int, gaps: bool) -> None:
    used = linear(count, 4 * TIB, 0.5 * TIB)
    if gaps:
        used[1 : count - 10] = np.nan  # the first hour and the last ten measured
    result = forecast(hours(count), used, np.full(count, 10 * TIB), NOW)
    assert result.status == "not_enough_history"
    assert result.days is None and result.growth_per_day is None


def test_no_capacity_is_not_enough_history() -> None:
    result = forecast(hours(48), linear(48, 1, 1), np.full(48, np.nan), NOW)
    assert result.status == "not_enough_history" and result.capacity is None


def test_a_pool_already_full_says_so() -> None:
    used = linear(48, 9 * TIB, 0.6 * TIB)
    result = forecast(hours(48), used, np.full(48, 10 * TIB), NOW)
    assert result.status == "full" and result.days == 0


def test_growth_beyond_the_horizon_leaves_the_latest_open() -> None:
    # 0.01 % a day of a nearly empty pool: some 27 years; the noise leaves no latest day.
    used = linear(720, 0.1 * TIB, 0.001 * TIB, noise=0.0001 * TIB)
    result = forecast(hours(720), used, np.full(720, 10 * TIB), NOW)
    assert result.status == "growing"
    assert result.days is None and result.days_high is None


def test_a_disk_added_changes_the_capacity_not_the_trend() -> None:
    # 10 TiB, then 20 TiB from ten days ago: the day comes from the new capacity.
    capacity = np.where(np.arange(720) < 480, 10 * TIB, 20 * TIB)
    used = linear(720, 4 * TIB, 0.1 * TIB, noise=0.005 * TIB)
    result = forecast(hours(720), used, capacity, NOW, levels=True)
    assert result.status == "growing" and result.capacity == 20 * TIB
    assert result.days == pytest.approx(130, abs=2)
    assert result.steps == 0


def test_data_deleted_starts_a_new_level_with_the_same_growth() -> None:
    # 1 % a day, and 3 TiB deleted ten days ago: still 1 % a day, from the new level.
    used = linear(720, 4 * TIB, 0.1 * TIB, noise=0.005 * TIB)
    used[480:] -= 3 * TIB
    capacity = np.full(720, 10 * TIB)
    result = forecast(hours(720), used, capacity, NOW, levels=True)
    assert result.steps == 1
    assert result.growth_per_day == pytest.approx(0.1 * TIB, rel=0.03)
    assert result.days == pytest.approx(60, abs=1)
    # Without levels the fall would flatten the line.
    plain = forecast(hours(720), used, capacity, NOW)
    assert plain.growth_per_day is not None and plain.growth_per_day < 0.05 * TIB


def test_gaps_in_the_history_are_left_out() -> None:
    used = linear(720, 4 * TIB, 0.1 * TIB, noise=0.005 * TIB)
    used[100:300] = np.nan  # the agent was stopped for days
    result = forecast(hours(720), used, np.full(720, 10 * TIB), NOW)
    assert result.status == "growing" and result.days == pytest.approx(30, abs=0.5)


# -- resources from merged history answers ---------------------------------------------------


def answer(*series: tuple[str, dict[str, str], np.ndarray]) -> dict:
    t = hours(720)
    return {
        "series": [
            {
                "key": series_key(name, tuple(sorted(labels.items()))),
                "points": [
                    [float(x), None, None if np.isnan(v) else float(v), None]
                    for x, v in zip(t, values, strict=True)
                ],
            }
            for name, labels, values in series
        ]
    }


def flat(value: float) -> np.ndarray:
    return np.full(720, value)


def test_resources_from_the_nodes_answers() -> None:
    grow = linear(720, 4 * TIB, 0.1 * TIB, noise=0.005 * TIB)
    nodes = ("node1", "node2")
    gib = 2.0**30
    cpu = []
    for node in nodes:
        # 4 cores a node; busy 1 core, then growing by 0.02 cores a day.
        busy = linear(720, 1, 0.02, noise=0.01, seed=3)
        for mode, value in (("user", busy), ("system", flat(0.0)), ("idle", 4 - busy)):
            cpu.append((fc.CPU, {"node": node, "mode": mode}, value))
    ardfs_used = linear(720, 1 * TIB, 0.05 * TIB, noise=0.001 * TIB)
    answers = {
        fc.POOL_SIZE: answer(
            *[
                (fc.POOL_SIZE, {"pool": p, "node": n}, flat(10 * TIB))
                for p in ("shared", "local")
                for n in nodes
            ]
        ),
        fc.POOL_FREE: answer(
            (fc.POOL_FREE, {"pool": "shared", "node": "node1"}, 10 * TIB - grow),
            (fc.POOL_FREE, {"pool": "shared", "node": "node2"}, 10 * TIB - grow),
            (fc.POOL_FREE, {"pool": "local", "node": "node1"}, flat(9 * TIB)),
            (fc.POOL_FREE, {"pool": "local", "node": "node2"}, 10 * TIB - grow),
        ),
        fc.DISK_SIZE: answer(
            *[
                (fc.DISK_SIZE, {"pool": "fast", "disk": d, "node": n}, flat(2 * TIB))
                for d, n in (("d1", "node1"), ("d2", "node2"))
            ]
        ),
        fc.DISK_FREE: answer(
            *[
                (fc.DISK_FREE, {"pool": "fast", "disk": d, "node": n}, 2 * TIB - ardfs_used / 2)
                for d, n in (("d1", "node1"), ("d2", "node2"))
            ]
        ),
        fc.MEMORY_TOTAL: answer(*[(fc.MEMORY_TOTAL, {"node": n}, flat(64 * gib)) for n in nodes]),
        fc.VM_MEMORY: answer(
            (fc.VM_MEMORY, {"vm": "a"}, flat(8 * gib)),
            # A VM started ten days ago: nothing measured before (it held nothing).
            (fc.VM_MEMORY, {"vm": "b"}, np.where(np.arange(720) < 480, np.nan, 16 * gib)),
        ),
        fc.CPU: answer(*cpu),
    }
    pools = [
        PoolInfo("shared", shared=True),
        PoolInfo("local", shared=False),
        PoolInfo("fast", shared=True, ardfs=True, share=0.5, disks=frozenset({"d1", "d2"})),
        PoolInfo("empty", shared=True),
    ]
    found = resources(answers, pools, {"node1", "node2"}, NOW - 30 * 86400, NOW + 1, NOW)
    by = {(r.name, r.node): r for r in found}
    assert list(by) == [
        ("shared", None), ("local", "node1"), ("local", "node2"), ("fast", None),
        ("empty", None), ("memory", None), ("cpu", None),
    ]  # fmt: skip
    shared = by["shared", None].forecast
    assert shared.status == "growing" and shared.days == pytest.approx(30, abs=0.5)
    assert by["local", "node1"].forecast.status == "not_growing"
    assert by["local", "node2"].forecast.days == pytest.approx(30, abs=0.5)
    fast = by["fast", None].forecast
    # 4 TiB of disks, half of it for volumes; 1 TiB raw used growing 0.05 TiB a day.
    assert fast.capacity == pytest.approx(2 * TIB) and fast.used is not None
    assert fast.growth_per_day == pytest.approx(0.025 * TIB, rel=0.05)
    assert fast.days == pytest.approx((4 - 1 - 0.05 * 29.96) / 0.05, abs=1)
    assert by["empty", None].forecast.status == "not_enough_history"
    memory = by["memory", None].forecast
    assert memory.capacity == 128 * gib and memory.used == 24 * gib
    assert memory.status == "growing"  # a VM more: a step up is growth
    cpu_forecast = by["cpu", None].forecast
    assert cpu_forecast.capacity == pytest.approx(8)
    assert cpu_forecast.growth_per_day == pytest.approx(0.04, rel=0.05)
    # 2 + 0.04 * 29.96 cores busy now, 8 cores: (8 - 3.2) / 0.04 days.
    assert cpu_forecast.days == pytest.approx((8 - 2 - 0.04 * 29.96) / 0.04, abs=2)


def test_a_node_down_still_counts_and_a_node_gone_does_not() -> None:
    gib = 2.0**30
    down = np.where(np.arange(720) < 700, 64 * gib, np.nan)  # its last 20 hours unmeasured
    answers = {
        fc.MEMORY_TOTAL: answer(
            (fc.MEMORY_TOTAL, {"node": "node1"}, flat(64 * gib)),
            (fc.MEMORY_TOTAL, {"node": "node2"}, down),
            (fc.MEMORY_TOTAL, {"node": "node3"}, down),
        ),
    }
    found = resources(answers, [], {"node1", "node2"}, NOW - 30 * 86400, NOW + 1, NOW)
    memory = next(r for r in found if r.kind == "memory").forecast
    assert memory.capacity == 128 * gib  # node3 left the cluster
    assert memory.used == 0 and memory.status == "not_growing"
