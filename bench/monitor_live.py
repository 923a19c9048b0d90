"""Monica's live view: the CPU a node spends on one watched object's second.

While someone watches a VM (or a node), its node samples it every second (monitor/live.py).
This measures the sampling of one VM — a real QEMU started as bench/monitor_collect.py starts
them (TCG, paused, a virtio disk on a null block driver, its QMP socket): /proc of its process
and vCPU threads, QMP `query-blockstats`, the rates and the ring — and of the node itself
(/proc/stat, meminfo, loadavg, diskstats, net/dev). Measured: this process's CPU seconds a
sample, i.e. a share of a core (one sample a second). The samples are taken back to back
(their CPU is what counts, not the second between them).

Run from the repository root: `.venv/bin/python -m bench.monitor_live [--samples 300]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

from bench.common import BenchError, exit_on_sigterm, load_snapshot, print_rows, stats, write_result
from bench.monitor_collect import start_qemu
from heron.hypervisor.qemu import QemuVM
from heron.monitor.catalog import METRICS
from heron.monitor.collect.vm import VmProbe
from heron.monitor.live import Live, Sampler, Watch, node_sampler, vm_sampler
from heron.util.wait import until_sync


async def sampled(sampler: Sampler, count: int) -> list[float]:
    live = Live(lambda kind, name: sampler, {m.name: m.kind for m in METRICS.values()})
    watch = Watch(sampler, live.clock())
    spent = []
    for t in range(count + 1):  # the first opens the QMP session: not counted
        started = time.process_time()
        await live.sample(watch, float(t))
        spent.append(time.process_time() - started)
    if len(watch.ring.points) < count:
        raise BenchError(f"only {len(watch.ring.points)} of {count + 1} samples were kept")
    return spent[1:]


async def measure(vm: QemuVM, count: int) -> tuple[list[float], list[float]]:
    probe = VmProbe(vm.vm_id, vm, memory=16 << 20, balloon=False)
    try:
        one_vm = await sampled(vm_sampler(lambda: probe), count)
    finally:
        await vm.close()
    return one_vm, await sampled(node_sampler(), count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300)
    args = parser.parse_args()
    exit_on_sigterm()
    load_before = load_snapshot()
    root = Path(tempfile.mkdtemp(prefix="heron-bench-live-"))
    vm: QemuVM | None = None
    try:
        vm = start_qemu(root, 0)
        if not until_sync(lambda: vm is not None and vm.paths.qmp.exists(), 60, 0.1):
            raise BenchError("the QEMU did not open its QMP socket")
        one_vm, node = asyncio.run(measure(vm, args.samples))
    finally:
        if vm is not None:
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(vm.paths.pidfile.read_text()), signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)
    vm_stats, node_stats = stats(one_vm), stats(node)
    results = {
        "vm_cpu_s_per_sample": vm_stats,
        "vm_cpu_share_of_a_core": round(vm_stats["mean"], 5),
        "node_cpu_s_per_sample": node_stats,
        "node_cpu_share_of_a_core": round(node_stats["mean"], 5),
    }
    path = write_result("monitor_live", vars(args), results, load_before)
    print_rows(
        f"Monica's live view, {args.samples} samples a second apart (taken back to back)",
        [
            ("one VM: CPU a second", f"{1000 * vm_stats['mean']:.2f} ms (p90 "
             f"{1000 * vm_stats['p90']:.2f} ms): {100 * vm_stats['mean']:.2f} % of a core"),
            ("the node: CPU a second", f"{1000 * node_stats['mean']:.2f} ms (p90 "
             f"{1000 * node_stats['p90']:.2f} ms): {100 * node_stats['mean']:.2f} % of a core"),
            ("results", str(path)),
        ],
    )  # fmt: skip


if __name__ == "__main__":
    main()
