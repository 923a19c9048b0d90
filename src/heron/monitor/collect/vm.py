"""The running VMs of this node, as the libvirt exporter names what it measures of a domain.

For each VM, concurrently:

* from its QEMU process (/proc/PID): CPU time (all threads), the run-queue wait of its vCPU
  threads (the guest's steal, vSphere's "ready"), its vCPUs, its resident memory;
* over QMP: each disk's I/O counters (`query-blockstats`), the guest's RAM, its balloon
  where it has one;
* from the node's interface counters: each of its taps' (the NICs), read once for all VMs
  from /proc/net/dev of the data plane's namespace. Not /sys/class/net/TAP/statistics: sysfs
  shows the namespace of whoever mounted it, and a devcluster node's taps live in a namespace
  of their own; /proc/thread-self/net/dev shows the reading thread's. libvirt reads the same
  file and swaps the directions for a tap (what the tap transmits, the guest receives); so
  does Heron, so `receive` is the guest's receive, as on libvirt's dashboards.

Each VM's QMP part and process part are bounded by `timeout`: a hung QEMU (stopped, stuck in
the kernel, its monitor busy) delays nobody, it is named in `VmCollection.late`, and its QMP
samples are missing this time. Its process samples come all the same when /proc answers
(a stopped QEMU's CPU time stands still; that is the truth).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from heron.hypervisor.qemu import QemuVM
from heron.hypervisor.qmp_base import QemuError
from heron.hypervisor.qmp_stats import BlockStats
from heron.models.network import BUILTIN_NETWORKS
from heron.models.vm import VMSpec
from heron.monitor.collect.node import USER_HZ, parse_net_dev
from heron.monitor.series import Sample, labels_of
from heron.network.netns import run_in
from heron.network.plan import tap_name

log = logging.getLogger(__name__)

# Under the agent's bound on a whole source (agent/monitor.py: 5 s), so that a hung QEMU
# costs its own samples only, never the round's VM samples.
DEFAULT_TIMEOUT = 4.0

# The guest's view of a tap's /proc/net/dev columns: the tap's transmit is the guest's receive.
GUEST_COLUMNS = {
    "receive_bytes": 8,
    "receive_packets": 9,
    "receive_errors": 10,
    "receive_drops": 11,
    "transmit_bytes": 0,
    "transmit_packets": 1,
    "transmit_errors": 2,
    "transmit_drops": 3,
}


@dataclass(frozen=True)
class VmProbe:
    """What the collector needs of one running VM: its QEMU (process and QMP session), the
    names of its taps (`vm_taps` of the spec it runs with), and the network namespace they
    are in (the data plane's `netns`; None: the host's, as on a real server)."""

    vm_id: str
    qemu: QemuVM
    taps: Sequence[str] = ()
    netns: str | None = None
    # What the agent knows without asking QEMU (each QMP call costs the round CPU): the
    # guest's RAM from the spec it runs with, and whether it has a balloon at all.
    memory: int | None = None
    balloon: bool = True


def vm_taps(spec: VMSpec) -> list[str]:
    """The taps of a VM running with `spec`: one per NIC on a network of a switch (QEMU's
    own user-mode NAT and unplugged NICs have none), named as the agent names them."""
    return [
        tap_name(nic.mac)
        for nic in spec.nics
        if nic.network not in BUILTIN_NETWORKS and nic.mac is not None
    ]


@dataclass
class VmCollection:
    samples: list[Sample] = field(default_factory=list)
    # VMs whose QEMU did not answer within the timeout: their QMP samples are missing.
    late: list[str] = field(default_factory=list)
    # VMs whose QEMU refused or was gone (and why): their samples are missing in part.
    failed: dict[str, str] = field(default_factory=dict)


# -- the QEMU process (/proc/PID) -----------------------------------------------------------


def parse_pid_stat(text: str, user_hz: int = USER_HZ) -> tuple[str, float]:
    """(command name, CPU seconds: utime + stime of all threads, living and gone) from
    /proc/PID/stat. The name in parentheses may hold spaces and parentheses: the other fields
    count from its end."""
    head, _, tail = text.rpartition(")")
    fields = tail.split()
    # After the name: state is field 3; utime and stime are fields 14 and 15.
    return head.partition("(")[2], (int(fields[11]) + int(fields[12])) / user_hz


PAGE = os.sysconf("SC_PAGE_SIZE")


def parse_statm(statm: str, page: int = PAGE) -> int:
    """The resident set of /proc/PID/statm (its second field, in pages), in bytes: the
    same figure as status's VmRSS, from a file a tenth of its size to make and read."""
    return int(statm.split()[1]) * page


def is_vcpu_thread(comm: str) -> bool:
    """QEMU started with `-name ...,debug-threads=on` (as Heron starts it) names its vCPU
    threads "CPU 0/KVM", "CPU 1/TCG"...: the threads whose waiting is the guest's steal."""
    return comm.startswith("CPU ") and "/" in comm


def vcpu_threads(task_dir: Path) -> list[str]:
    """The ids of the vCPU threads of the process whose /proc/PID/task is `task_dir`."""
    found = []
    for thread in task_dir.iterdir():
        try:
            if is_vcpu_thread((thread / "comm").read_text().strip()):
                found.append(thread.name)
        except OSError:
            continue  # ended between listing and reading
    return found


# pid -> its vCPU threads and the rounds left before they are listed again: QEMU's threads
# stay (vCPUs come and go only with hotplug), and reading every thread's name each round
# cost more than everything else measured of a VM.
_threads: dict[int, tuple[list[str], int]] = {}
RELIST = 6


def vcpu_wait(task_dir: Path, pid: int | None = None) -> tuple[int, float]:
    """(vCPU threads, seconds they waited runnable on a run queue) of the process whose
    /proc/PID/task is `task_dir`; schedstat is "run_ns wait_ns timeslices". With `pid`, the
    threads are listed again only every RELIST calls, or when one of them is gone."""
    known = _threads.get(pid) if pid is not None else None
    if known is None or known[1] <= 0:
        known = (vcpu_threads(task_dir), RELIST)
    threads, left = known
    count, waited = 0, 0
    for tid in threads:
        try:
            schedstat = (task_dir / tid / "schedstat").read_text().split()
        except OSError:
            left = 0  # a thread gone (a vCPU unplugged): list them again next time
            continue
        count += 1
        if len(schedstat) >= 2:
            waited += int(schedstat[1])
    if pid is not None:
        _threads[pid] = (threads, left - 1)
    return count, waited / 1e9


def process_samples(vm_id: str, pid: int, proc: Path = Path("/proc")) -> list[Sample]:
    """The samples of the VM's QEMU process `pid` (none when it is gone)."""
    vm = labels_of(vm=vm_id)
    base = proc / str(pid)
    try:
        command, cpu = parse_pid_stat((base / "stat").read_text())
        if not command.startswith("qemu"):
            return []  # the pidfile outlived its QEMU, and its pid is another's now
        rss = parse_statm((base / "statm").read_text())
        vcpus, waited = vcpu_wait(base / "task", pid)
    except (OSError, IndexError, ValueError):
        return []
    samples = [Sample("libvirt_domain_info_cpu_time_seconds_total", vm, cpu)]
    samples.append(Sample("libvirt_domain_info_memory_usage_bytes", vm, rss))
    if vcpus:
        samples += [
            Sample("libvirt_domain_info_virtual_cpus", vm, vcpus),
            Sample("libvirt_domain_info_cpu_ready_seconds_total", vm, waited),
        ]
    return samples


def _process_parts(probes: Sequence[VmProbe], prune: bool = True) -> list[Sample]:
    # Only files whose reading takes no lock of the process's memory (its cmdline would):
    # a QEMU stuck with that lock held must not hold this thread.
    samples, pids = [], set()
    for probe in probes:
        pid = probe.qemu.pid()
        if pid is not None:
            pids.add(pid)
            samples += process_samples(probe.vm_id, pid)
    if prune:  # `probes` are all the running VMs: the threads of the others are gone
        for gone in set(_threads) - pids:
            del _threads[gone]
    return samples


class ProcessReads:
    """The thread reading the QEMU processes while it runs: one for all VMs (a thread per VM
    cost as much CPU as the reading itself), and no second one while it is stuck in the
    kernel. The 10 s round has one (`prune`: it reads every running VM, and forgets the
    vCPU threads of the VMs gone); a live view of one VM has its own, so that neither waits
    for, nor takes the answer of, the other's reading."""

    def __init__(self, prune: bool = True):
        self.prune = prune
        self.reading: asyncio.Future[list[Sample]] | None = None

    async def __call__(self, probes: Sequence[VmProbe], timeout: float) -> list[Sample]:
        if self.reading is None or self.reading.done():
            self.reading = asyncio.ensure_future(
                asyncio.to_thread(_process_parts, probes, self.prune)
            )
        return await asyncio.wait_for(asyncio.shield(self.reading), timeout)


_ROUND_READS = ProcessReads()


# -- QMP -----------------------------------------------------------------------------------


def info_samples(names: Mapping[str, str]) -> list[Sample]:
    """`heron_vm_info` of each VM (uuid -> its name): 1, its labels say which VM it is, as
    node_exporter's `*_info` metrics do; a dashboard joins on `vm` to pick a VM by name."""
    return [
        Sample("heron_vm_info", labels_of(vm=vm_id, name=name), 1.0)
        for vm_id, name in sorted(names.items())
    ]


def block_samples(vm_id: str, disks: Sequence[BlockStats]) -> list[Sample]:
    samples = []
    for disk in disks:
        labels = labels_of(vm=vm_id, target_device=disk.disk)
        prefix = "libvirt_domain_block_stats_"
        samples += [
            Sample(prefix + "read_bytes_total", labels, disk.read_bytes),
            Sample(prefix + "write_bytes_total", labels, disk.write_bytes),
            Sample(prefix + "read_requests_total", labels, disk.read_ops),
            Sample(prefix + "write_requests_total", labels, disk.write_ops),
            Sample(prefix + "flush_requests_total", labels, disk.flush_ops),
            Sample(prefix + "read_time_seconds_total", labels, disk.read_ns / 1e9),
            Sample(prefix + "write_time_seconds_total", labels, disk.write_ns / 1e9),
            Sample(prefix + "flush_time_seconds_total", labels, disk.flush_ns / 1e9),
        ]
    return samples


async def _qmp_part(probe: VmProbe) -> list[Sample]:
    qemu, vm = probe.qemu, labels_of(vm=probe.vm_id)
    samples = block_samples(probe.vm_id, await qemu.block_stats())
    memory = probe.memory if probe.memory is not None else (await qemu.memory_size()).total
    samples.append(Sample("libvirt_domain_info_maximum_memory_bytes", vm, memory))
    balloon = await qemu.balloon_bytes() if probe.balloon else None
    if balloon is not None:
        samples.append(Sample("libvirt_domain_memory_stats_actual_balloon_bytes", vm, balloon))
    return samples


# -- NICs ----------------------------------------------------------------------------------


def interface_samples(
    vm_id: str, taps: Sequence[str], interfaces: dict[str, list[int]]
) -> list[Sample]:
    """The counters of the VM's taps found in `interfaces` (parsed /proc/net/dev), as the
    guest sees them."""
    samples = []
    for tap in taps:
        counters = interfaces.get(tap)
        if counters is None:
            continue  # not (yet, or any more) there
        labels = labels_of(vm=vm_id, target_device=tap)
        samples += [
            Sample(f"libvirt_domain_interface_stats_{what}_total", labels, counters[column])
            for what, column in GUEST_COLUMNS.items()
        ]
    return samples


def read_interfaces(netns: str | None) -> dict[str, list[int]]:
    """/proc/net/dev of the namespace `netns` (None: this process's), read by a thread in it."""

    def read() -> str:
        with open("/proc/thread-self/net/dev") as counters:
            return counters.read()

    return parse_net_dev(run_in(netns, read))


# -- all of them ---------------------------------------------------------------------------


async def collect_vms(
    vms: Sequence[VmProbe], timeout: float = DEFAULT_TIMEOUT, reads: ProcessReads | None = None
) -> VmCollection:
    """Everything measured of the VMs `vms`, each VM's parts concurrently and bounded by
    `timeout` seconds, so that the whole takes about `timeout` at worst. `reads` reads their
    processes (default: the 10 s round's reader, for all the running VMs)."""
    read_processes = reads or _ROUND_READS
    result = VmCollection()
    namespaces = {probe.netns for probe in vms if probe.taps}
    counters: dict[str | None, dict[str, list[int]]] = {}

    async def interfaces_of(netns: str | None) -> None:
        try:
            counters[netns] = await asyncio.wait_for(
                asyncio.to_thread(read_interfaces, netns), timeout
            )
        except (OSError, TimeoutError) as exc:
            log.warning("cannot read the taps' counters in %s: %s", netns or "the host", exc)

    async def processes() -> None:
        try:
            result.samples += await read_processes(vms, timeout)
        except TimeoutError:
            log.warning("the QEMU processes' /proc did not answer in %s s", timeout)

    async def one(probe: VmProbe) -> None:
        try:
            result.samples += await asyncio.wait_for(_qmp_part(probe), timeout)
        except TimeoutError:
            result.late.append(probe.vm_id)
        except (QemuError, OSError) as exc:
            result.failed[probe.vm_id] = str(exc)

    await asyncio.gather(
        processes(), *(interfaces_of(n) for n in namespaces), *(one(p) for p in vms)
    )
    for probe in vms:
        result.samples += interface_samples(probe.vm_id, probe.taps, counters.get(probe.netns, {}))
    return result
