"""The node collector (heron.monitor.collect.node) on captured /proc texts written into a
directory laid out as /proc and /sys, and once on this machine's own /proc."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from support import wait_for

from heron.monitor.collect import node
from heron.monitor.collect.node import StatFs, collect_node
from heron.monitor.series import Sample, labels_of

# Captured from a Debian 12 host (6.1 kernel, 2 CPUs); the diskstats and net/dev lines from a
# server with a SATA disk, an NVMe disk, LVM and two VM taps.
STAT = """\
cpu  1280136 2065 375030 790198 5993 0 22571 4737 0 0
cpu0 626943 1145 185337 413675 2331 0 8365 2382 0 0
cpu1 653193 920 189692 376522 3662 0 14206 2354 0 0
intr 152738512 0 9 0 0 0 0 0 0 0 0 0 0 0 0 0 0
ctxt 316744396
btime 1764898245
processes 2011203
procs_running 9
procs_blocked 0
softirq 70217376 3 16853306 24 2412468 0 0 14 31204813 0 19746748
"""
LOADAVG = "8.17 8.47 5.95 8/331 24334\n"
MEMINFO = """\
MemTotal:       24683784 kB
MemFree:        17683064 kB
MemAvailable:   22398412 kB
Buffers:           76476 kB
Cached:          4680724 kB
SwapCached:            0 kB
Active:          1355960 kB
SwapTotal:       2097148 kB
SwapFree:        2097020 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
"""
PRESSURE = {
    "cpu": "some avg10=85.44 avg60=80.57 avg300=67.30 total=5179405174\n"
    "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
    "memory": "some avg10=0.00 avg60=0.00 avg300=0.00 total=202\n"
    "full avg10=0.00 avg60=0.00 avg300=0.00 total=148\n",
    "io": "some avg10=1.50 avg60=4.04 avg300=3.93 total=312263480\n"
    "full avg10=0.00 avg60=0.02 avg300=0.25 total=38309052\n",
}
DISKSTATS = """\
   7       0 loop0 190 0 90316 227 172 224 115452 823 0 508 1103 0 0 0 0 72 52
   8       0 sda 332890 1203 21686842 464208 5413719 80233 163043760 1192841 0 575924 1722458 0 0 0 0 66031 65409
   8       1 sda1 332000 1203 21680000 464000 5413000 80233 163040000 1192000 0 575000 1720000 0 0 0 0 0 0
 259       0 nvme0n1 1000 0 8000 1500 2000 0 16000 2500 1 3000 4000 0 0 0 0 10 20
 259       1 nvme0n1p1 1000 0 8000 1500 2000 0 16000 2500 1 3000 4000 0 0 0 0 0 0
 253       0 dm-0 900 0 7000 1400 1900 0 15000 2400 0 2900 3800 0 0 0 0 0 0
   1       0 ram0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
  43       0 nbd0 10 0 80 1 0 0 0 0 0 1 1 0 0 0 0 0 0
"""  # noqa: E501 (captured lines)
NET_DEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 137406411468 21468429    0    0    0     0          0         0 137406411468 21468429    0    0    0     0       0          0
  eno1: 1790157134   59474    2    3    0     0          0        12  4159873   41267    4    5    0     0       0          0
hb6f1e2a3c4d:  5000  50    0    0    0     0          0         0     6000      60    0    0    0     0       0          0
ht525400123456:  7000  70    0    0    0     0          0         0     8000      80    0    0    0     0       0          0
ht525400abcdef:  9000  90    0    0    0     0          0         0     1000      10    0    0    0     0       0          0
"""  # noqa: E501 (captured lines)
MOUNTS = """\
proc /proc proc rw,relatime 0 0
sysfs /sys sysfs rw,relatime 0 0
devtmpfs /dev devtmpfs rw,relatime,size=12334824k,nr_inodes=3083706,mode=755 0 0
tmpfs /dev/shm tmpfs rw,relatime,size=24683784k 0 0
/dev/sda1 / ext4 rw,relatime 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw,relatime 0 0
/dev/nvme0n1p1 /var/lib/heron xfs rw,relatime 0 0
overlay /var/lib/docker/overlay2/x/merged overlay rw,relatime,lowerdir=/a,upperdir=/b 0 0
nfs.example:/export /mnt/nfs\\040pool nfs4 rw,relatime,vers=4.2 0 0
nsfs /run/netns/hn1-node1 nsfs rw 0 0
"""


def value(samples: list[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and s.labels == labels_of(**labels)]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def names(samples: list[Sample]) -> set[str]:
    return {s.name for s in samples}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return captured_host(tmp_path)


def captured_host(tmp_path: Path) -> Path:
    """/proc and /sys as the captured host has them, under `tmp_path`."""
    proc = tmp_path / "proc"
    (proc / "pressure").mkdir(parents=True)
    (proc / "net").mkdir()
    (proc / "self").mkdir()
    (proc / "stat").write_text(STAT)
    (proc / "loadavg").write_text(LOADAVG)
    (proc / "meminfo").write_text(MEMINFO)
    for resource, text in PRESSURE.items():
        (proc / "pressure" / resource).write_text(text)
    (proc / "diskstats").write_text(DISKSTATS)
    (proc / "net" / "dev").write_text(NET_DEV)
    (proc / "self" / "mounts").write_text(MOUNTS)
    for disk in ("loop0", "sda", "nvme0n1", "dm-0", "ram0", "nbd0"):
        (tmp_path / "sys" / "block" / disk).mkdir(parents=True)
    return tmp_path


class FakeStatvfs:
    """statvfs answering for the captured mounts: 4 KiB blocks."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, path: str) -> os.statvfs_result:
        self.asked.append(path)
        # f_bsize f_frsize f_blocks f_bfree f_bavail f_files f_ffree f_favail f_flag f_namemax
        return os.statvfs_result((4096, 4096, 1000, 600, 500, 100, 50, 50, 0, 255))


def collect(root: Path, statvfs: FakeStatvfs | None = None) -> list[Sample]:
    return collect_node(
        root / "proc", root / "sys", statfs=StatFs(statvfs=statvfs or FakeStatvfs())
    )


def test_cpu_seconds_per_mode_are_summed_over_cpus_in_user_hz(root: Path) -> None:
    samples = node.parse_stat(STAT, user_hz=100)
    assert [(s.labels, s.value) for s in samples] == [
        (labels_of(mode="user"), 12801.36),
        (labels_of(mode="nice"), 20.65),
        (labels_of(mode="system"), 3750.30),
        (labels_of(mode="idle"), 7901.98),
        (labels_of(mode="iowait"), 59.93),
        (labels_of(mode="irq"), 0.0),
        (labels_of(mode="softirq"), 225.71),
        (labels_of(mode="steal"), 47.37),
    ]
    # guest and guest_nice are in user and nice already: not modes of their own.
    assert {s.name for s in samples} == {"node_cpu_seconds_total"}


def test_load_memory_and_pressure(root: Path) -> None:
    samples = collect(root)
    assert value(samples, "node_load1") == 8.17
    assert value(samples, "node_load15") == 5.95
    assert value(samples, "node_memory_MemTotal_bytes") == 24683784 * 1024
    assert value(samples, "node_memory_MemAvailable_bytes") == 22398412 * 1024
    assert value(samples, "node_memory_SwapFree_bytes") == 2097020 * 1024
    assert "node_memory_SwapCached_bytes" not in names(samples)
    # PSI totals are microseconds; the system-wide cpu "full" line is left out (always 0).
    assert value(samples, "node_pressure_cpu_waiting_seconds_total") == 5179.405174
    assert value(samples, "node_pressure_io_stalled_seconds_total") == 38.309052
    assert value(samples, "node_pressure_memory_waiting_seconds_total") == 0.000202
    assert "node_pressure_cpu_stalled_seconds_total" not in names(samples)


def test_a_kernel_without_pressure_files_gives_the_rest(root: Path) -> None:
    for resource in PRESSURE:
        (root / "proc" / "pressure" / resource).unlink()
    (root / "proc" / "pressure").rmdir()
    samples = collect(root)
    assert not [n for n in names(samples) if n.startswith("node_pressure_")]
    assert value(samples, "node_load5") == 8.47


def test_disks_are_whole_physical_devices(root: Path) -> None:
    samples = collect(root)
    devices = {dict(s.labels)["device"] for s in samples if s.name.startswith("node_disk_")}
    # Partitions are in their disk; loop, ram, dm- and nbd are stacked on other storage.
    assert devices == {"sda", "nvme0n1"}
    assert value(samples, "node_disk_reads_completed_total", device="sda") == 332890
    assert value(samples, "node_disk_writes_completed_total", device="sda") == 5413719
    assert value(samples, "node_disk_read_bytes_total", device="sda") == 21686842 * 512
    assert value(samples, "node_disk_written_bytes_total", device="sda") == 163043760 * 512
    assert value(samples, "node_disk_read_time_seconds_total", device="sda") == 464.208
    assert value(samples, "node_disk_write_time_seconds_total", device="sda") == 1192.841
    assert value(samples, "node_disk_io_time_seconds_total", device="sda") == 575.924


def test_interfaces_leave_out_lo_and_the_vms_taps(root: Path) -> None:
    samples = collect(root)
    devices = {dict(s.labels)["device"] for s in samples if s.name.startswith("node_network_")}
    assert devices == {"eno1", "hb6f1e2a3c4d"}
    assert value(samples, "node_network_receive_bytes_total", device="eno1") == 1790157134
    assert value(samples, "node_network_receive_packets_total", device="eno1") == 59474
    assert value(samples, "node_network_receive_errs_total", device="eno1") == 2
    assert value(samples, "node_network_receive_drop_total", device="eno1") == 3
    assert value(samples, "node_network_transmit_bytes_total", device="eno1") == 4159873
    assert value(samples, "node_network_transmit_packets_total", device="eno1") == 41267
    assert value(samples, "node_network_transmit_errs_total", device="eno1") == 4
    assert value(samples, "node_network_transmit_drop_total", device="eno1") == 5


def test_an_old_kernels_net_dev_without_a_space_after_the_name() -> None:
    text = NET_DEV.replace("  eno1: 1790157134", "  eno1:1790157134")
    assert node.parse_net_dev(text)["eno1"][:2] == [1790157134, 59474]


def test_filesystems_are_the_real_ones_with_their_mount_point_and_type(root: Path) -> None:
    statvfs = FakeStatvfs()
    samples = collect(root, statvfs)
    mounts = {
        (dict(s.labels)["mountpoint"], dict(s.labels)["fstype"], dict(s.labels)["device"])
        for s in samples
        if s.name == "node_filesystem_size_bytes"
    }
    # The octal escape of the mount table is undone: the NFS mount point has a space.
    assert mounts == {
        ("/", "ext4", "/dev/sda1"),
        ("/var/lib/heron", "xfs", "/dev/nvme0n1p1"),
        ("/mnt/nfs pool", "nfs4", "nfs.example:/export"),
    }
    assert sorted(statvfs.asked) == ["/", "/mnt/nfs pool", "/var/lib/heron"]
    labels = {"device": "/dev/sda1", "mountpoint": "/", "fstype": "ext4"}
    assert value(samples, "node_filesystem_size_bytes", **labels) == 1000 * 4096
    assert value(samples, "node_filesystem_free_bytes", **labels) == 600 * 4096
    assert value(samples, "node_filesystem_avail_bytes", **labels) == 500 * 4096


def test_a_mount_point_mounted_over_counts_as_its_last_mount() -> None:
    text = "/dev/sda1 /srv ext4 rw 0 0\ntmpfs /srv tmpfs rw 0 0\n/dev/sdb1 /data xfs rw 0 0\n"
    assert node.parse_mounts(text) == [("/dev/sdb1", "/data", "xfs")]


def test_a_hung_network_filesystem_is_skipped_without_piling_up_threads() -> None:
    release = threading.Event()
    asked: list[str] = []
    reply = os.statvfs_result((4096, 4096, 10, 5, 5, 1, 1, 1, 0, 255))

    def statvfs(path: str) -> os.statvfs_result:
        asked.append(path)
        if path == "/mnt/nfs":
            release.wait()  # the server does not answer (until the test lets it)
        return reply

    statfs = StatFs(timeout=0.05, statvfs=statvfs)
    try:
        assert statfs("/mnt/nfs", "nfs4") is None
        assert statfs.stuck() == ["/mnt/nfs"]
        # Asked again while the first call hangs: skipped, no second thread.
        assert statfs("/mnt/nfs", "nfs4") is None
        assert asked.count("/mnt/nfs") == 1
        # A local filesystem is asked directly meanwhile.
        assert statfs("/", "ext4") == reply
    finally:
        release.set()
    for thread in threading.enumerate():
        if thread.name == "statvfs /mnt/nfs":
            thread.join()
    assert statfs.stuck() == []
    release.clear()
    asked.clear()
    assert statfs("/srv/fuse", "fuse.sshfs") == reply  # answered within the time: measured


def test_this_machines_proc_makes_sense() -> None:
    first = collect_node()
    cpu = sum(s.value for s in first if s.name == "node_cpu_seconds_total")
    assert value(first, "node_memory_MemTotal_bytes") > 0
    assert (
        0
        < value(first, "node_memory_MemAvailable_bytes")
        <= value(first, "node_memory_MemTotal_bytes")
    )
    assert value(first, "node_load1") >= 0
    assert any(s.name == "node_filesystem_size_bytes" and s.value > 0 for s in first)

    def grown() -> bool:
        now = sum(s.value for s in collect_node() if s.name == "node_cpu_seconds_total")
        return now > cpu

    # CPU seconds of all modes together grow with wall time (idle counts too).
    wait_for(lambda: grown() or None, 10, "the node's CPU seconds to grow")


def test_the_live_view_leaves_out_filesystems_and_pressure(root: Path) -> None:
    statvfs = FakeStatvfs()
    samples = collect_node(
        root / "proc",
        root / "sys",
        statfs=StatFs(statvfs=statvfs),
        filesystems=False,
        pressure=False,
    )
    names = {s.name for s in samples}
    assert not {n for n in names if n.startswith(("node_filesystem_", "node_pressure_"))}
    assert {"node_cpu_seconds_total", "node_memory_MemTotal_bytes", "node_load1"} <= names
    assert {"node_disk_read_bytes_total", "node_network_receive_bytes_total"} <= names
    assert statvfs.asked == []  # no statvfs a second
