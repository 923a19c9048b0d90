"""Monica's history store: bytes per stored sample, CPU per node, memory, query time.

A node with `--vms` VMs (25 series each: CPU, memory, two disks, one NIC, as the collectors
make them) and 120 node series is simulated for `--hours` hours of 10 s rounds, the clock
moved forward by the benchmark (no waiting): mostly idle VMs, a tenth of them busy, as a
host with 200 VMs has. Measured:
- bytes per stored sample: the raw blocks' size over the samples in them;
- CPU per node: process CPU seconds spent recording over the simulated seconds (the issue's
  budget is 1 % of a core at 200 VMs; collection itself is measured with the collectors);
- memory: the resident set's growth while recording;
- query time of one series for 24 h (1 min rollups) and 1 year (1 h rollups, the year's day
  blocks written beforehand the way the store seals them).
The baseline a ratio is taken against: Whisper (Graphite) and RRD keep 12 and 8 bytes a point
(fixed-size archives); a ratio to 8 is printed.

Run from the repository root: `.venv/bin/python -m bench.monitor_store [--vms 200 --hours 3]`.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.common import exit_on_sigterm, load_snapshot, print_rows, ratio, stats, write_result
from heron.monitor import query
from heron.monitor.recorder import Recorder
from heron.monitor.series import Kind, Sample, labels_of
from heron.monitor.store import DAY, HOUR, RAW, Store, write_block

VM_SERIES = 25
NODE_SERIES = 120
RRD_BYTES = 8.0


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


def workload(
    vms: int, rng: np.random.Generator
) -> tuple[dict[str, Kind], Callable[[], list[Sample]]]:
    """The series of a node and its VMs, and a function giving the next round's raw values:
    counters grow by whole events (requests, bytes, jiffies), a tenth of them busy; gauges
    move by pages; a third of the gauges never change (sizes and totals)."""
    names = [(f"node_series_{i}", labels_of(device=f"d{i % 7}")) for i in range(NODE_SERIES)]
    for vm in range(vms):
        names += [(f"libvirt_series_{j}", labels_of(vm=f"vm-{vm:04d}")) for j in range(VM_SERIES)]
    count = len(names)
    counter = np.array([not name.endswith(("_0", "_5")) for name, _ in names])  # 4 in 5
    busy = rng.random(count) < 0.1
    scale = np.where(rng.random(count) < 0.4, 1e5, 10.0)  # bytes, or requests and jiffies
    mean = np.where(busy, scale, scale * 0.01) * rng.gamma(2.0, 1.0, count)
    fixed = rng.random(count) < 0.33
    level = rng.integers(1 << 20, 1 << 34, count).astype(np.float64)

    def values() -> list[Sample]:
        nonlocal level
        grown = rng.poisson(mean * RAW.step).astype(np.float64)
        moved = np.where(fixed, 0.0, 4096.0 * rng.integers(-64, 65, count))
        level = level + np.where(counter, grown, moved)
        return [Sample(n, labels, v) for (n, labels), v in zip(names, level.tolist(), strict=True)]

    kinds: dict[str, Kind] = {
        name: "counter" if c else "gauge" for (name, _), c in zip(names, counter, strict=True)
    }
    return kinds, values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=200)
    parser.add_argument("--hours", type=float, default=3.0)
    args = parser.parse_args()
    exit_on_sigterm()
    load_before = load_snapshot()
    rng = np.random.default_rng(17)
    kinds, values = workload(args.vms, rng)
    root = Path(tempfile.mkdtemp(prefix="heron-bench-monitor-"))
    try:
        t0 = 1_800_000_000 - 1_800_000_000 % DAY
        clock = Clock(t0)
        store = Store(root, clock=clock)
        recorder = Recorder(store, kinds)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rounds = int(args.hours * 3600 / RAW.step)
        cpu = 0.0
        for i in range(rounds):
            clock.t = t0 + i * RAW.step
            samples = values()
            started = time.process_time()
            recorder.record(clock.t, samples)
            cpu += time.process_time() - started
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        sealed = [p for p in (root / "10s").glob("*.blk") if int(p.stem) + 3600 <= clock.t]
        raw_bytes = sum(p.stat().st_size for p in sealed)
        raw_samples = len(samples) * len(sealed) * RAW.slots
        bytes_per_sample = raw_bytes / raw_samples
        cpu_share = cpu / (rounds * RAW.step)

        # A year of day blocks of 1 h rollups for 1000 series, one of them queried.
        year = root / "year"
        year_store = Store(year, clock=Clock(t0 + 365 * DAY))
        ids = [year_store.index.id(f'libvirt_series_0{{vm="vm-{v:04d}"}}') for v in range(1000)]
        for day in range(365):
            block = {s: rng.gamma(2.0, 1e5, (HOUR.slots, 3)) for s in ids}
            write_block(year / "1h" / f"{t0 + day * DAY}.blk", block)
        timings_year, timings_day = [], []
        for _ in range(5):
            started = time.perf_counter()
            answer = query.read(
                year_store, "libvirt_series_0", (("vm", "vm-0007"),), t0, t0 + 365 * DAY,
                now=t0 + 365 * DAY,
            )  # fmt: skip
            timings_year.append(time.perf_counter() - started)
            assert answer["resolution"] == "1h" and answer["series"], answer["resolution"]
            started = time.perf_counter()
            day = query.read(
                store, "libvirt_series_3", (("vm", "vm-0011"),), clock.t - DAY, clock.t,
                now=clock.t,
            )  # fmt: skip
            timings_day.append(time.perf_counter() - started)
            assert day["series"], "no series in the day's query"
        results = {
            "series": len(samples),
            "rounds": rounds,
            "raw_bytes_per_sample": round(bytes_per_sample, 3),
            "ratio_to_rrd": round(ratio(bytes_per_sample, RRD_BYTES), 3),
            "record_cpu_share_of_a_core": round(cpu_share, 5),
            "record_cpu_ms_per_round": round(1000 * cpu / rounds, 3),
            "rss_growth_mib": round((rss_after - rss_before) / 1024, 1),
            "query_1y_one_series_s": stats(timings_year),
            "query_24h_one_series_s": stats(timings_day),
            "disk_bytes": store.size(),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    path = write_result("monitor_store", vars(args), results, load_before)
    print_rows(
        f"Monica's store, {args.vms} VMs ({len(samples)} series), {args.hours:g} h simulated",
        [
            ("bytes per raw sample", f"{bytes_per_sample:.3f} ({results['ratio_to_rrd']} of RRD)"),
            ("recording CPU", f"{100 * cpu_share:.3f} % of a core"),
            ("memory growth", f"{results['rss_growth_mib']} MiB"),
            ("query 24 h", f"{results['query_24h_one_series_s']['p50'] * 1000:.1f} ms"),
            ("query 1 year", f"{results['query_1y_one_series_s']['p50'] * 1000:.1f} ms"),
            ("results", str(path)),
        ],
    )


if __name__ == "__main__":
    main()
