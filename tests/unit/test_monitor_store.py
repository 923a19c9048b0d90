"""heron.monitor.store: a node's history on its disk, with rollups, across restarts."""

from pathlib import Path

import numpy as np
import pytest

from heron.monitor.series import labels_of
from heron.monitor.store import (
    HOUR,
    MINUTE,
    RAW,
    Block,
    Store,
    StoreError,
    block_ids,
    pick_resolution,
    write_block,
)

T0 = 1_800_000_000 - 1_800_000_000 % 86400  # a day's start


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


def cpu(mode: str) -> str:
    return f'node_cpu_seconds_total{{mode="{mode}"}}'


def fill(store: Store, clock: Clock, start: float, end: float, value=lambda t: t % 1000) -> None:
    t = start
    while t < end:
        clock.t = t
        store.append(t, [(cpu("user"), value(t)), (cpu("idle"), 1.0)])
        t += 10


def test_samples_of_the_hour_under_way_are_read_back_with_gaps_as_nan(tmp_path: Path) -> None:
    clock = Clock(T0)
    store = Store(tmp_path, clock=clock)
    fill(store, clock, T0, T0 + 60)
    clock.t = T0 + 100
    store.append(T0 + 90, [(cpu("user"), 7.0)])  # 60..90 missing
    got = store.read("node_cpu_seconds_total", labels_of(mode="user"), T0, T0 + 100, RAW)
    [points] = got.values()
    assert list(points.times[:3]) == [T0, T0 + 10, T0 + 20]
    assert points.values[:6, 1].tolist() == [(T0 + 10 * i) % 1000 for i in range(6)]
    assert np.isnan(points.values[6:9, 1]).all()
    assert points.values[9].tolist() == [7.0, 7.0, 7.0]


def test_labels_select_series_and_another_metric_is_not_matched(tmp_path: Path) -> None:
    clock = Clock(T0)
    store = Store(tmp_path, clock=clock)
    store.append(T0, [(cpu("user"), 1.0), (cpu("idle"), 2.0), ("node_load1", 3.0)])
    every = store.read("node_cpu_seconds_total", (), T0, T0 + 10, RAW)
    assert sorted(every) == [cpu("idle"), cpu("user")]
    assert list(store.read("node_load", (), T0, T0 + 10, RAW)) == []
    assert list(store.read("node_load1", (), T0, T0 + 10, RAW)) == ["node_load1"]


def test_an_hour_that_ends_is_sealed_with_its_minute_and_hour_rollups(tmp_path: Path) -> None:
    clock = Clock(T0)
    store = Store(tmp_path, clock=clock)
    fill(store, clock, T0, T0 + 3600 + 20, value=lambda t: (t - T0) // 10 % 6)  # 0..5 a minute
    assert (tmp_path / "10s" / f"{T0}.blk").exists()
    assert (tmp_path / "1m" / f"{T0}.blk").exists()
    assert (tmp_path / "1h" / f"{T0}.blk").exists()
    [minutes] = store.read(
        "node_cpu_seconds_total", labels_of(mode="user"), T0, T0 + 3600, MINUTE
    ).values()
    assert len(minutes.times) == 60
    assert minutes.values[0].tolist() == [0.0, 2.5, 5.0]
    [hours] = store.read(
        "node_cpu_seconds_total", labels_of(mode="user"), T0, T0 + 7200, HOUR
    ).values()
    assert hours.values[0].tolist() == [0.0, 2.5, 5.0]
    # The hour under way is rolled up from memory: its first minute has 0 and 1.
    assert hours.values[1].tolist() == [0.0, 0.5, 1.0]


def test_a_restarted_store_carries_on_and_rolls_up_hours_that_ended_meanwhile(
    tmp_path: Path,
) -> None:
    clock = Clock(T0)
    store = Store(tmp_path, checkpoint=60, clock=clock)
    fill(store, clock, T0, T0 + 600)
    store.flush()
    # The agent is away for two hours; the new one starts in the third.
    clock.t = T0 + 2 * 3600 + 5
    again = Store(tmp_path, clock=clock)
    assert (tmp_path / "1m" / f"{T0}.blk").exists()
    again.append(clock.t, [(cpu("user"), 42.0)])
    [points] = again.read(
        "node_cpu_seconds_total", labels_of(mode="user"), T0, T0 + 3 * 3600, MINUTE
    ).values()
    assert points.values[0, 1] == pytest.approx(np.mean([(T0 + i * 10) % 1000 for i in range(6)]))
    assert np.isnan(points.values[60:120]).all()  # the hour nobody measured
    assert points.values[120, 1] == 42.0


def test_a_sample_for_a_sealed_hour_is_dropped(tmp_path: Path) -> None:
    clock = Clock(T0 + 3600)
    store = Store(tmp_path, clock=clock)
    store.append(T0 + 3600, [("node_load1", 1.0)])
    store.append(T0 + 10, [("node_load1", 9.0)])
    assert not (tmp_path / "10s" / f"{T0}.blk").exists()
    [points] = store.read("node_load1", (), T0, T0 + 3610, RAW).values()
    assert np.isnan(points.values[:360]).all()
    assert points.values[360, 1] == 1.0


def test_old_blocks_go_when_their_resolution_no_longer_keeps_them(tmp_path: Path) -> None:
    clock = Clock(T0)
    store = Store(tmp_path, clock=clock)
    fill(store, clock, T0, T0 + 3610)
    clock.t = T0 + RAW.keep + 2 * 3600
    store.append(clock.t, [("node_load1", 1.0)])
    store.append(clock.t + 3600, [("node_load1", 1.0)])  # seals an hour: prunes
    assert not (tmp_path / "10s" / f"{T0}.blk").exists()
    assert (tmp_path / "1m" / f"{T0}.blk").exists()  # kept 92 days


def test_values_keep_sixteen_bits_of_mantissa(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    values = np.concatenate([rng.gamma(2.0, 5000.0, 359), [np.nan]]).reshape(360, 1)
    write_block(tmp_path / "b.blk", {3: values})
    back = Block(tmp_path / "b.blk").get(3)
    assert back is not None and np.isnan(back[-1])
    relative = np.abs(back[:-1] - values[:-1, 0]) / values[:-1, 0]
    assert relative.max() < 2e-5


def test_a_file_that_is_no_block_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.blk").write_bytes(b"garbage")
    with pytest.raises(StoreError):
        Block(tmp_path / "x.blk")


def test_a_series_key_with_a_line_break_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path, clock=Clock(T0))
    with pytest.raises(StoreError):
        store.append(T0, [("a\nb", 1.0)])


def test_the_resolution_fits_the_range_and_what_is_kept() -> None:
    now = T0
    assert pick_resolution(now - 900, now, now) is RAW
    assert pick_resolution(now - 86400, now, now) is MINUTE
    assert pick_resolution(now - 30 * 86400, now, now) is HOUR
    # Ten days ago for fifteen minutes: raw samples are gone by then.
    assert pick_resolution(now - 10 * 86400, now - 10 * 86400 + 900, now) is MINUTE


def vm_series(vm: str) -> list[str]:
    return [
        f'libvirt_domain_info_cpu_time_seconds_total{{vm="{vm}"}}',
        f'libvirt_domain_block_stats_read_bytes_total{{target_device="disk0",vm="{vm}"}}',
    ]


def test_a_deleted_vms_series_leave_the_index_when_no_kept_block_holds_them(
    tmp_path: Path,
) -> None:
    clock = Clock(T0)
    store = Store(tmp_path, clock=clock)
    gone, kept = vm_series("gone"), vm_series("kept")
    measure(store, clock, [*gone, *kept], 1.0, T0, T0 + 7200)
    # The VM "gone" is deleted; "kept" is measured now and then (each sample seals an hour).
    index = tmp_path / "series"
    assert set(index.read_text().splitlines()) == {*gone, *kept}
    held = {store.index.id(key) for key in gone}
    index_bytes = index.stat().st_size

    def holding(series: set[int]) -> list[Path]:
        return [p for p in tmp_path.rglob("*.blk") if block_ids(p) & series]

    # Kept while the hourly rollups hold it (raw and minute blocks are long gone).
    measure(store, clock, kept, 2.0, T0 + HOUR.keep - 3 * 86400)
    assert [p.relative_to(tmp_path).as_posix() for p in holding(held)] == [f"1h/{T0}.blk"]
    assert set(index.read_text().splitlines()) == {*gone, *kept}
    [points] = store.read(
        "libvirt_domain_info_cpu_time_seconds_total", labels_of(vm="gone"), T0, T0 + 86400, HOUR
    ).values()
    assert points.values[0].tolist() == [1.0, 1.0, 1.0]
    # Then its last day's rollups go, and the series with them: from the index on disk and in
    # memory; no byte of it is left.
    measure(store, clock, kept, 2.0, T0 + HOUR.keep + 2 * 86400)
    assert holding(held) == []
    assert set(index.read_text().splitlines()) == {"", *kept}
    assert index.stat().st_size == index_bytes - sum(len(key) for key in gone)
    assert not set(gone) & set(store.index.ids) and not held & set(store.last_day)
    cpu_time = store.read("libvirt_domain_info_cpu_time_seconds_total", (), T0, clock.t, HOUR)
    assert list(cpu_time) == [kept[0]]
    # A new VM's series take the freed ids (the file does not grow), and a store opened
    # again reads the index as it was left.
    new = vm_series("new")
    measure(store, clock, new, 3.0, clock.t + 10)
    store.flush()
    assert set(index.read_text().splitlines()) == {*kept, *new}
    assert {store.index.id(key) for key in new} == held
    again = Store(tmp_path, clock=clock)
    assert {again.index.id(key) for key in [*kept, *new]} == {0, 1, 2, 3}
    [points] = again.read(
        "libvirt_domain_info_cpu_time_seconds_total", labels_of(vm="new"), T0, clock.t + 10, HOUR
    ).values()
    assert np.nanmax(points.values) == 3.0  # not the old VM's 1.0


def measure(
    store: Store, clock: Clock, keys: list[str], value: float, start: float, end: float = 0
) -> None:
    """Samples of `keys` every 10 s over [start, end), or one at `start`."""
    t = start
    while t < max(end, start + 10):
        clock.t = t
        store.append(t, [(key, value) for key in keys])
        t += 10


def test_series_of_an_older_store_that_no_block_holds_leave_its_index(tmp_path: Path) -> None:
    """An index written before series could leave it, naming series with no data left."""
    (tmp_path / "series").write_text("old_metric\nnode_load1\n")
    write_block(tmp_path / "1h" / f"{T0}.blk", {1: np.ones((24, 3))})
    store = Store(tmp_path, clock=Clock(T0 + 3600))
    assert (tmp_path / "series").read_text() == "\nnode_load1\n"
    assert store.index.id("node_load15") == 0
