"""The VM collector's parts (heron.monitor.collect.vm) without QEMU: /proc/PID texts written
into a directory, tap counters, and `collect_vms` over QEMUs whose QMP answers are scripted,
one of which never answers, also as the live view samples one VM. tests/integration/
test_monitor_vm.py runs it on real QEMUs."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from support import eventually

from heron.hypervisor.command import RuntimePaths
from heron.hypervisor.qemu import QemuVM
from heron.hypervisor.qmp_base import QMPCommandError
from heron.hypervisor.qmp_stats import BlockStats
from heron.models.vm import NicSpec, VMSpec
from heron.monitor.catalog import METRICS
from heron.monitor.collect import node
from heron.monitor.collect import vm as collector
from heron.monitor.collect.node import parse_net_dev
from heron.monitor.collect.vm import PAGE, VmProbe, collect_vms
from heron.monitor.live import Live, vm_sampler
from heron.monitor.series import Sample, labels_of

VM = "0f0e0d0c-0b0a-4908-8706-050403020100"
# A QEMU's /proc/PID/stat (Debian 12, TCG): its name holds a space and a parenthesis.
STAT = (
    "4242 (qemu-system-x86) S 1 4241 4241 0 -1 138412352 31337 0 0 0 "
    "1234 567 0 0 20 0 9 0 10526 1637117952 40000 18446744073709551615 1 1 0 0 0 0 0 4096 "
    "17987 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0"
)
STATM = f"90000 {160000 * 1024 // PAGE} 2000 700 0 50000 0\n"  # resident: 160000 KiB
THREADS = {  # tid: (comm, schedstat "run_ns wait_ns slices")
    "4242": ("qemu-system-x86", "900000000 500000000 100"),
    "4243": ("call_rcu", "1000 2000 3"),
    "4250": ("CPU 0/TCG", "12000000000 1500000000 4000"),
    "4251": ("CPU 1/TCG", "11000000000 2500000000 3900"),
    "4252": ("worker", "5000 6000 7"),
}


def value(samples: list[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and s.labels == labels_of(**labels)]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def fake_proc(root: Path, stat: str = STAT) -> Path:
    base = root / "4242"
    (base / "task").mkdir(parents=True)
    (base / "stat").write_text(stat)
    (base / "statm").write_text(STATM)
    for tid, (comm, schedstat) in THREADS.items():
        (base / "task" / tid).mkdir()
        (base / "task" / tid / "comm").write_text(comm + "\n")
        (base / "task" / tid / "schedstat").write_text(schedstat + "\n")
    return root


def test_process_samples_cpu_ready_vcpus_and_rss(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path)
    samples = collector.process_samples(VM, 4242, proc)
    ticks = node.USER_HZ
    assert value(samples, "libvirt_domain_info_cpu_time_seconds_total", vm=VM) == (
        (1234 + 567) / ticks
    )
    # Only the vCPU threads' run-queue wait: the guest's steal.
    assert value(samples, "libvirt_domain_info_cpu_ready_seconds_total", vm=VM) == 4.0
    assert value(samples, "libvirt_domain_info_virtual_cpus", vm=VM) == 2
    assert value(samples, "libvirt_domain_info_memory_usage_bytes", vm=VM) == 160000 * 1024


def test_a_name_with_parentheses_and_a_reused_pid(tmp_path: Path) -> None:
    assert collector.parse_pid_stat(STAT.replace("(qemu-system-x86)", "(a) b (c)"), 100) == (
        "a) b (c",
        18.01,
    )
    # The pidfile outlived its QEMU and the pid is another program's now: nothing of it.
    proc = fake_proc(tmp_path, STAT.replace("(qemu-system-x86)", "(bash)"))
    assert collector.process_samples(VM, 4242, proc) == []
    assert collector.process_samples(VM, 4343, proc) == []  # gone


NET_DEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
ht525400123456:  7000  70    1    2    0     0          0         0     8000      80    3    4    0     0       0          0
"""  # noqa: E501 (a captured line)


def test_a_taps_counters_are_reported_from_the_guests_side() -> None:
    samples = collector.interface_samples(VM, ["ht525400123456", "htgone"], parse_net_dev(NET_DEV))
    nic = {"vm": VM, "target_device": "ht525400123456"}
    # What the tap transmitted (8000 bytes), the guest received.
    assert value(samples, "libvirt_domain_interface_stats_receive_bytes_total", **nic) == 8000
    assert value(samples, "libvirt_domain_interface_stats_receive_packets_total", **nic) == 80
    assert value(samples, "libvirt_domain_interface_stats_receive_errors_total", **nic) == 3
    assert value(samples, "libvirt_domain_interface_stats_receive_drops_total", **nic) == 4
    assert value(samples, "libvirt_domain_interface_stats_transmit_bytes_total", **nic) == 7000
    assert value(samples, "libvirt_domain_interface_stats_transmit_packets_total", **nic) == 70
    assert value(samples, "libvirt_domain_interface_stats_transmit_errors_total", **nic) == 1
    assert value(samples, "libvirt_domain_interface_stats_transmit_drops_total", **nic) == 2
    assert {dict(s.labels)["target_device"] for s in samples} == {"ht525400123456"}


def test_a_vms_taps_are_its_nics_on_switches() -> None:
    spec = VMSpec(
        name="t",
        nics=[
            NicSpec(network="lan", mac="52:54:00:12:34:56"),
            NicSpec(network="user"),
            NicSpec(network="none", mac="52:54:00:00:00:01"),
            NicSpec(network="dmz", mac="52:54:00:ab:cd:ef"),
        ],
    )
    assert collector.vm_taps(spec) == ["ht525400123456", "ht525400abcdef"]


def test_block_samples_per_disk_in_seconds() -> None:
    disk = BlockStats("disk0", 4096, 8192, 1, 2, 3, 1_500_000_000, 2_500_000_000, 500_000)
    samples = collector.block_samples(VM, [disk])
    labels = {"vm": VM, "target_device": "disk0"}
    assert value(samples, "libvirt_domain_block_stats_read_bytes_total", **labels) == 4096
    assert value(samples, "libvirt_domain_block_stats_write_requests_total", **labels) == 2
    assert value(samples, "libvirt_domain_block_stats_read_time_seconds_total", **labels) == 1.5
    assert value(samples, "libvirt_domain_block_stats_flush_time_seconds_total", **labels) == 5e-4


class ScriptedQemu(QemuVM):
    """A QEMU whose QMP answers come from `replies`; `hang`: it never answers (a stopped
    QEMU); `refuse`: it refuses every command."""

    def __init__(
        self, vm_id: str, replies: dict[str, Any], hang: bool = False, refuse: bool = False
    ):
        super().__init__(vm_id, RuntimePaths(Path(tempfile.gettempdir()) / "no-such-vm" / vm_id))
        self.replies = replies
        self.hang = hang
        self.refuse = refuse
        self.answered = asyncio.Event()

    def pid(self) -> int | None:
        return None  # no process: the QMP part only

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        if self.hang:
            await asyncio.Event().wait()
        if self.refuse:
            raise QMPCommandError(command, "GenericError", "refused")
        if command in self.replies:
            return self.replies[command]
        raise QMPCommandError(command, "DeviceNotActive", "No balloon device has been activated")


REPLIES = {
    "query-blockstats": [
        {
            "device": "",
            "node-name": "disk0",
            "qdev": "/machine/peripheral/disk0-dev/virtio-backend",
            "stats": {
                "rd_bytes": 512,
                "wr_bytes": 0,
                "rd_operations": 1,
                "wr_operations": 0,
                "flush_operations": 0,
                "rd_total_time_ns": 10,
                "wr_total_time_ns": 0,
                "flush_total_time_ns": 0,
            },
        }
    ],
    "query-memory-size-summary": {"base-memory": 128 * 1024**2, "plugged-memory": 0},
}


async def test_a_qemu_that_does_not_answer_delays_nobody() -> None:
    good = ScriptedQemu("vm-good", REPLIES)
    hung = ScriptedQemu("vm-hung", REPLIES, hang=True)
    refusing = ScriptedQemu("vm-refusing", REPLIES, refuse=True)
    result = await collect_vms(
        [VmProbe("vm-hung", hung), VmProbe("vm-good", good), VmProbe("vm-refusing", refusing)],
        timeout=0.2,
    )
    assert result.late == ["vm-hung"]
    assert list(result.failed) == ["vm-refusing"]
    assert {dict(s.labels)["vm"] for s in result.samples} == {"vm-good"}
    disk = {"vm": "vm-good", "target_device": "disk0"}
    assert value(result.samples, "libvirt_domain_block_stats_read_bytes_total", **disk) == 512
    assert (
        value(result.samples, "libvirt_domain_info_maximum_memory_bytes", vm="vm-good")
        == 128 * 1024**2
    )
    # No balloon device: no balloon sample.
    names = {s.name for s in result.samples}
    assert "libvirt_domain_memory_stats_actual_balloon_bytes" not in names


async def test_a_live_views_reader_leaves_the_rounds_vcpu_threads_alone() -> None:
    # The 10 s round's reader reads every running VM, and forgets the threads of the others;
    # a live view's reads one VM, and must not.
    collector._threads[999999] = (["1"], 3)
    try:
        probes = [VmProbe("vm-good", ScriptedQemu("vm-good", REPLIES))]
        await collect_vms(probes, 0.5, collector.ProcessReads(prune=False))
        assert 999999 in collector._threads
        await collect_vms(probes, 0.5)
        assert 999999 not in collector._threads
    finally:
        collector._threads.pop(999999, None)


async def test_a_live_vm_second_comes_while_another_qemu_hangs() -> None:
    qemus = {
        "vm-good": ScriptedQemu("vm-good", REPLIES),
        "vm-hung": ScriptedQemu("vm-hung", REPLIES, hang=True),
    }
    kinds = {m.name: m.kind for m in METRICS.values()}
    live = Live(
        lambda kind, name: vm_sampler(lambda: VmProbe(name, qemus[name]), timeout=0.05),
        kinds,
        step=0.1,
        timeout=0.08,
    )
    try:
        assert live.ask("vm:vm-hung") == live.ask("vm:vm-good") == []

        async def three() -> list[tuple[float, dict[str, float]]] | None:
            points = live.ask("vm:vm-good")
            return points if len(points) >= 3 else None

        points = await eventually(three, 10, "three live seconds of the VM that answers")
        disk = 'libvirt_domain_block_stats_read_bytes_total{target_device="disk0",vm="vm-good"}'
        assert disk in points[-1][1]  # a rate, from the second point on
        assert live.ask("vm:vm-hung") == []  # no process, and its QMP never answers
    finally:
        live.stop()
