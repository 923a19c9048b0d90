"""The VM collector (heron.monitor.collect.vm) and the live view's sampling of a VM on real
QEMUs: two test guests launched as the agent launches them (daemonized, Heron's command
line), each with its boot disk, a blank data disk and a NIC on a tap in a namespace of its
own (as a devcluster node's data plane).
CPU time grows while a guest runs, disk bytes and requests grow while it writes and reads its
data disk, its NIC's counters grow while it sends (its DHCP client does); and a QEMU stopped
with SIGSTOP is reported late while the other VM's samples come all the same, and misses
its own live seconds' QMP part while the other VM's come each second.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fakes.running import short_directory
from planes import namespaces
from support import eventually

from heron.hypervisor import command
from heron.hypervisor.command import ResolvedDisk, RuntimePaths
from heron.hypervisor.qemu import QemuVM
from heron.models.common import new_id
from heron.models.vm import VM, NicSpec, VMSpec
from heron.monitor.catalog import METRICS
from heron.monitor.collect.vm import VmCollection, VmProbe, collect_vms
from heron.monitor.live import LIVE_METRICS, Live, vm_sampler
from heron.monitor.series import Sample, labels_of
from heron.network.dataplane import DataPlane
from heron.network.plan import tap_name
from heron.network.tap import open_tap
from heron.storage import qemuimg
from heron.testguest import build
from heron.testguest.net import CommandChannel

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="taps in namespaces need root"),
]

BOOT = 300  # TCG on a shared machine
TIMEOUT = 5.0  # each VM's bound in the collector
MiB = 1024**2
RAM_KIB = 128 * 1024 + 8  # as command.py gives TCG guests


@dataclass
class Guest:
    probe: VmProbe
    serial: Path

    @property
    def vm(self) -> str:
        return self.probe.vm_id

    @property
    def qemu(self) -> QemuVM:
        return self.probe.qemu


@pytest.fixture(scope="module")
async def guests(testguest: Path) -> AsyncIterator[list[Guest]]:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    with short_directory() as root, namespaces("mon") as (plane,):
        started: list[Guest] = []
        try:
            for index in range(2):
                started.append(await launch(root / f"g{index}", testguest, plane, index))
            for guest in started:

                async def ready(guest: Guest = guest) -> bool:
                    log = guest.qemu.paths.console_log
                    return log.exists() and build.READY_MARKER in log.read_text(errors="replace")

                await eventually(ready, BOOT, f"guest {guest.vm} to boot")
            yield started
        finally:
            for guest in started:
                pid = guest.qemu.pid()
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGCONT)
                await guest.qemu.kill()
                await guest.qemu.close()


async def launch(root: Path, testguest: Path, plane: str, index: int) -> Guest:
    root.mkdir()
    boot, data = root / "boot.qcow2", root / "data.qcow2"
    made = await asyncio.create_subprocess_exec(
        "qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(testguest), str(boot)
    )  # fmt: skip
    assert await made.wait() == 0
    await qemuimg.create(data, "qcow2", 32 * MiB)
    mac = f"52:54:00:4d:00:{index:02x}"
    spec = VMSpec(name=f"mon{index}", memory_mib=128, nics=[NicSpec(network="n1", mac=mac)])
    vm = VM(id=new_id(), spec=spec, node="n", created_at=1)
    qemu = QemuVM(vm.id, RuntimePaths(root / "run"))
    disks = [
        ResolvedDisk("virtio", {"driver": "file", "filename": str(image)}, "qcow2")
        for image in (boot, data)
    ]
    tap = tap_name(mac)
    fd = open_tap(DataPlane(plane), tap, 1500)
    try:
        args = command.build(vm, disks, qemu.paths, "tcg", ram=RAM_KIB, taps={0: fd})
        await qemu.launch(args, pass_fds=(fd,))
    finally:
        os.close(fd)  # QEMU holds the tap now
    # Up, as the agent's network controller brings a VM's taps up.
    up = await asyncio.create_subprocess_exec("ip", "-n", plane, "link", "set", tap, "up")
    assert await up.wait() == 0
    return Guest(VmProbe(vm.id, qemu, [tap], plane), qemu.paths.serial)


def value(samples: list[Sample], name: str, **labels: str) -> float | None:
    found = [s.value for s in samples if s.name == name and s.labels == labels_of(**labels)]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


def disk(guest: Guest, name: str, result: VmCollection) -> float:
    found = value(result.samples, name, vm=guest.vm, target_device="disk1")
    assert found is not None, (name, result)
    return found


async def in_guest(guest: Guest, script: str) -> str:
    def run() -> str:
        with CommandChannel(guest.serial) as channel:
            result = channel.run(script, timeout=120)
        assert result.rc == 0, (script, result)
        return result.output

    return await asyncio.to_thread(run)


async def test_cpu_disk_and_nic_counters_grow(guests: list[Guest]) -> None:
    guest = guests[0]
    before = await collect_vms([g.probe for g in guests], TIMEOUT)
    assert before.late == [] and before.failed == {}, before
    assert {s.name for s in before.samples} <= set(METRICS)
    vm = {"vm": guest.vm}
    cpu = value(before.samples, "libvirt_domain_info_cpu_time_seconds_total", **vm)
    assert cpu is not None and cpu > 0
    assert value(before.samples, "libvirt_domain_info_virtual_cpus", **vm) == 1
    ready = value(before.samples, "libvirt_domain_info_cpu_ready_seconds_total", **vm)
    assert ready is not None and ready >= 0
    rss = value(before.samples, "libvirt_domain_info_memory_usage_bytes", **vm)
    assert rss is not None and rss > 0
    maximum = value(before.samples, "libvirt_domain_info_maximum_memory_bytes", **vm)
    assert maximum == RAM_KIB * 1024
    # No balloon device on Heron's command line: no balloon series.
    assert "libvirt_domain_memory_stats_actual_balloon_bytes" not in {
        s.name for s in before.samples
    }
    # Both disks, named by their devices.
    disks = {
        dict(s.labels)["target_device"]
        for s in before.samples
        if s.name == "libvirt_domain_block_stats_read_bytes_total"
        and dict(s.labels)["vm"] == guest.vm
    }
    assert disks == {"disk0", "disk1"}

    # The guest writes 2 MiB to its data disk and flushes, then reads them back, both past
    # its page cache (busybox's dd: no sync applet in the guest).
    await in_guest(
        guest,
        "while [ ! -b /dev/vdb ]; do sleep 0.2; done; "
        "dd if=/dev/zero of=/dev/vdb bs=64k count=32 oflag=direct conv=fsync 2>/dev/null && "
        "dd if=/dev/vdb of=/dev/null bs=64k count=32 iflag=direct 2>/dev/null && echo done",
    )
    after = await collect_vms([g.probe for g in guests], TIMEOUT)
    assert after.late == [] and after.failed == {}, after
    grown = {
        name: disk(guest, name, after) - disk(guest, name, before)
        for name in (
            "libvirt_domain_block_stats_read_bytes_total",
            "libvirt_domain_block_stats_write_bytes_total",
            "libvirt_domain_block_stats_read_requests_total",
            "libvirt_domain_block_stats_write_requests_total",
            "libvirt_domain_block_stats_flush_requests_total",
            "libvirt_domain_block_stats_read_time_seconds_total",
            "libvirt_domain_block_stats_write_time_seconds_total",
        )
    }
    print(f"the data disk's counters grew by {grown}")
    assert grown["libvirt_domain_block_stats_read_bytes_total"] >= 2 * MiB
    assert grown["libvirt_domain_block_stats_write_bytes_total"] >= 2 * MiB
    assert grown["libvirt_domain_block_stats_read_requests_total"] > 0
    assert grown["libvirt_domain_block_stats_write_requests_total"] > 0
    assert grown["libvirt_domain_block_stats_flush_requests_total"] > 0
    assert grown["libvirt_domain_block_stats_read_time_seconds_total"] > 0
    assert grown["libvirt_domain_block_stats_write_time_seconds_total"] > 0
    later = value(after.samples, "libvirt_domain_info_cpu_time_seconds_total", **vm)
    assert later is not None and later > cpu

    # Its NIC: the guest's DHCP client sends (nobody answers in the namespace), which the tap
    # receives and the guest's view calls transmitted.
    nic = {"vm": guest.vm, "target_device": guest.probe.taps[0]}

    async def sent() -> float | None:
        result = await collect_vms([guest.probe], TIMEOUT)
        packets = value(
            result.samples, "libvirt_domain_interface_stats_transmit_packets_total", **nic
        )
        return packets if packets else None

    await eventually(sent, 120, "the guest's NIC to have sent packets")
    result = await collect_vms([guest.probe], TIMEOUT)
    transmitted = value(
        result.samples, "libvirt_domain_interface_stats_transmit_bytes_total", **nic
    )
    received = value(result.samples, "libvirt_domain_interface_stats_receive_bytes_total", **nic)
    assert transmitted is not None and transmitted > 0
    assert received is not None  # nothing answers it, or the kernel's own (IPv6) chatter


async def test_a_stopped_qemu_delays_nobody(guests: list[Guest]) -> None:
    stopped, running = guests
    pid = stopped.qemu.pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        result = await collect_vms([stopped.probe, running.probe], TIMEOUT)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert result.late == [stopped.vm] and result.failed == {}, result
    by_vm: dict[str, set[str]] = {}
    for sample in result.samples:
        by_vm.setdefault(dict(sample.labels)["vm"], set()).add(sample.name)
    # The other VM: all of it.
    assert "libvirt_domain_block_stats_read_bytes_total" in by_vm[running.vm]
    assert "libvirt_domain_info_maximum_memory_bytes" in by_vm[running.vm]
    # The stopped one: nothing QEMU must answer; what the kernel knows of it (CPU time
    # standing still, memory, the tap's counters) comes all the same.
    assert not {n for n in by_vm[stopped.vm] if n.startswith("libvirt_domain_block_stats_")}
    assert "libvirt_domain_info_maximum_memory_bytes" not in by_vm[stopped.vm]
    assert "libvirt_domain_info_cpu_time_seconds_total" in by_vm[stopped.vm]

    # Running again, it answers again on the same QMP session.
    async def answered() -> VmCollection | None:
        again = await collect_vms([stopped.probe, running.probe], TIMEOUT)
        return again if not again.late else None

    again = await eventually(answered, 60, "the resumed QEMU to answer")
    assert again.failed == {}
    assert value(
        again.samples,
        "libvirt_domain_block_stats_read_bytes_total",
        vm=stopped.vm,
        target_device="disk0",
    )


def successive_seconds(times: list[float]) -> int:
    """The longest run of points one second apart."""
    longest = run = 1 if times else 0
    for a, b in itertools.pairwise(times):
        run = run + 1 if b - a == 1.0 else 1
        longest = max(longest, run)
    return longest


async def test_the_live_view_samples_each_second_and_a_stopped_qemu_only_itself(
    guests: list[Guest],
) -> None:
    stopped, running = guests
    probes = {g.vm: g.probe for g in guests}
    live = Live(
        lambda kind, name: vm_sampler(lambda: probes[name]),
        {m.name: m.kind for m in METRICS.values()},
    )
    pid = stopped.qemu.pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        for guest in guests:
            assert live.ask(f"vm:{guest.vm}") == []

        async def seconds() -> list[tuple[float, dict[str, float]]] | None:
            points = live.ask(f"vm:{running.vm}")
            times = [t for t, _ in points]
            assert times == sorted(set(times)), times
            return points if successive_seconds(times) >= 5 else None

        points = await eventually(seconds, 60, "five successive live seconds of the running VM")
        latest = points[-1][1]
        disk0 = f'{{target_device="disk0",vm="{running.vm}"}}'
        assert f"libvirt_domain_block_stats_read_bytes_total{disk0}" in latest, latest
        assert f'libvirt_domain_info_cpu_time_seconds_total{{vm="{running.vm}"}}' in latest
        # Only what the charts draw.
        assert all(key.partition("{")[0] in LIVE_METRICS for _, v in points for key in v)
        # The stopped QEMU answers no QMP: its seconds have what /proc tells (CPU standing
        # still), no disk counters.
        held = live.ask(f"vm:{stopped.vm}")
        assert held, "the stopped VM's seconds from /proc"
        assert not any("block_stats" in key for _, v in held for key in v)
        cpu = [
            v.get(f'libvirt_domain_info_cpu_time_seconds_total{{vm="{stopped.vm}"}}')
            for _, v in held
        ]
        assert {c for c in cpu if c is not None} <= {0.0}
    finally:
        os.kill(pid, signal.SIGCONT)
        live.stop()
