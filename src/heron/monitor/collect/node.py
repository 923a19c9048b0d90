"""The node itself, from /proc and statvfs: CPU, load, memory, pressure, disks, network
interfaces and filesystems, named as node_exporter names them.

`collect_node` is synchronous and cheap (a few small files read and a statvfs per mount);
the agent runs it in a thread every 10 s. The parsers are pure (text in, samples out), so
unit tests feed them captured /proc texts.

What is left out, and why:

* Disks: partitions (their I/O is their disk's), and devices stacked on or standing in for
  other storage: loop, ram, zram, fd, sr (a file's, memory's, a CD's), dm- and md (LVM and
  RAID: their I/O is their member disks' I/O again, so a sum over a node's disks would count
  it twice), nbd (network block devices: ARDFS volumes, measured per VM). What is left is the
  node's physical disks: their throughput, IOPS, latency and utilisation.
* Network interfaces: lo, and the VMs' taps (`ht...`): those are VM NICs, measured per VM,
  and a node's series would otherwise grow with every VM started on it.
* Filesystems: kernel and memory filesystems (proc, sysfs, cgroup, tmpfs, overlay, ...): they
  hold no data of their own on disk, and tmpfs mounts come and go per user and per service.
  Network and FUSE filesystems are measured, but their statvfs runs in a thread of its own:
  a hung NFS server (or FUSE daemon) blocks statvfs for as long as it is hung, so a mount whose
  last statvfs has not returned is skipped, not asked again (no pile of stuck threads), and
  one that does not answer within `NETWORK_STATFS_TIMEOUT` gives no samples this time.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from heron.monitor.series import Sample, labels_of
from heron.network.plan import TAP_PREFIX

USER_HZ = os.sysconf("SC_CLK_TCK")
SECTOR = 512  # /proc/diskstats counts 512-byte sectors whatever the device's block size
NETWORK_STATFS_TIMEOUT = 2.0
_OCTAL = re.compile(r"\\([0-7]{3})")

CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
MEMINFO = ("MemTotal", "MemAvailable", "MemFree", "Buffers", "Cached", "SwapTotal", "SwapFree")
SKIPPED_DISKS = ("loop", "ram", "zram", "fd", "sr", "dm-", "md", "nbd")
SKIPPED_INTERFACES = ("lo",)
# Filesystems with nothing of their own on a disk: the kernel's views, memory, overlays of
# containers, read-only images.
VIRTUAL_FILESYSTEMS = frozenset(
    {
        "autofs", "binfmt_misc", "bpf", "cgroup", "cgroup2", "configfs", "debugfs", "devpts",
        "devtmpfs", "efivarfs", "fusectl", "hugetlbfs", "iso9660", "mqueue", "nsfs", "overlay",
        "proc", "pstore", "ramfs", "rpc_pipefs", "securityfs", "selinuxfs", "squashfs",
        "sysfs", "tmpfs", "tracefs", "fuse.lxcfs", "fuse.portal", "nfsd",
    }
)  # fmt: skip
# Filesystems whose statvfs asks a server (or a user-space daemon) and may hang with it.
NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "9p", "lustre", "gpfs"}
)


# -- /proc/stat, /proc/loadavg, /proc/meminfo, /proc/pressure --------------------------------


def parse_stat(text: str, user_hz: int = USER_HZ) -> list[Sample]:
    """CPU seconds per mode, summed over CPUs: the first line of /proc/stat ("cpu  ..."),
    in USER_HZ ticks. A kernel that leaves out the later modes (steal) gives fewer."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            return [
                Sample("node_cpu_seconds_total", labels_of(mode=mode), int(ticks) / user_hz)
                for mode, ticks in zip(CPU_MODES, fields[1:], strict=False)
            ]
    return []


def parse_loadavg(text: str) -> list[Sample]:
    fields = text.split()
    return [
        Sample(f"node_load{minutes}", (), float(value))
        for minutes, value in zip((1, 5, 15), fields[:3], strict=True)
    ]


def parse_meminfo(text: str) -> list[Sample]:
    """The lines of MEMINFO, "Name:   123 kB" (kB is KiB)."""
    samples = []
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in MEMINFO:
            value, *unit = rest.split()
            scale = 1024 if unit == ["kB"] else 1
            samples.append(Sample(f"node_memory_{name}_bytes", (), int(value) * scale))
    return samples


def parse_pressure(resource: str, text: str) -> list[Sample]:
    """One PSI file: "some avg10=.. avg60=.. avg300=.. total=USECONDS", and "full ..." for
    memory and io (the system-wide cpu "full" line, where it exists, is always zero)."""
    names = {"some": "waiting", "full": "stalled"}
    samples = []
    for line in text.splitlines():
        kind, *pairs = line.split() or [""]
        if kind not in names or (resource == "cpu" and kind == "full"):
            continue
        totals = [p.removeprefix("total=") for p in pairs if p.startswith("total=")]
        if totals:
            name = f"node_pressure_{resource}_{names[kind]}_seconds_total"
            samples.append(Sample(name, (), int(totals[0]) / 1e6))
    return samples


# -- /proc/diskstats ------------------------------------------------------------------------


def whole_disks(sys: Path) -> set[str]:
    """The names of whole block devices (/sys/block/NAME; '!' there stands for '/' in
    /proc/diskstats' names, e.g. cciss!c0d0): partitions have no entry of their own."""
    try:
        return {entry.name.replace("!", "/") for entry in (sys / "block").iterdir()}
    except OSError:
        return set()


def measured_disk(name: str, whole: set[str]) -> bool:
    return name in whole and not name.startswith(SKIPPED_DISKS)


def parse_diskstats(text: str, whole: set[str]) -> list[Sample]:
    """/proc/diskstats: "MAJOR MINOR NAME reads merged sectors ms writes merged sectors ms
    in-flight io_ms weighted_ms ...", for the disks that `measured_disk` keeps."""
    samples = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 14 or not measured_disk(fields[2], whole):
            continue
        device = labels_of(device=fields[2])
        values = [int(f) for f in fields[3:14]]
        reads, _, read_sectors, read_ms, writes, _, written_sectors, write_ms, _, io_ms, _ = values
        samples += [
            Sample("node_disk_reads_completed_total", device, reads),
            Sample("node_disk_writes_completed_total", device, writes),
            Sample("node_disk_read_bytes_total", device, read_sectors * SECTOR),
            Sample("node_disk_written_bytes_total", device, written_sectors * SECTOR),
            Sample("node_disk_read_time_seconds_total", device, read_ms / 1000),
            Sample("node_disk_write_time_seconds_total", device, write_ms / 1000),
            Sample("node_disk_io_time_seconds_total", device, io_ms / 1000),
        ]
    return samples


# -- /proc/net/dev --------------------------------------------------------------------------

# The columns of /proc/net/dev that are measured: receive bytes packets errs drop (0-3), then
# after fifo frame compressed multicast, transmit bytes packets errs drop (8-11).
NET_DEV_COLUMNS = {
    "receive_bytes": 0,
    "receive_packets": 1,
    "receive_errs": 2,
    "receive_drop": 3,
    "transmit_bytes": 8,
    "transmit_packets": 9,
    "transmit_errs": 10,
    "transmit_drop": 11,
}


def parse_net_dev(text: str) -> dict[str, list[int]]:
    """/proc/net/dev: each interface's 16 counters, by name (two header lines first; older
    kernels print no space between "name:" and the first number)."""
    interfaces = {}
    for line in text.splitlines()[2:]:
        name, colon, rest = line.partition(":")
        fields = rest.split()
        if colon and len(fields) >= 16:
            interfaces[name.strip()] = [int(f) for f in fields[:16]]
    return interfaces


def measured_interface(name: str) -> bool:
    return name not in SKIPPED_INTERFACES and not name.startswith(TAP_PREFIX)


def network_samples(interfaces: dict[str, list[int]]) -> list[Sample]:
    samples = []
    for name, counters in interfaces.items():
        if not measured_interface(name):
            continue
        device = labels_of(device=name)
        samples += [
            Sample(f"node_network_{what}_total", device, counters[column])
            for what, column in NET_DEV_COLUMNS.items()
        ]
    return samples


# -- filesystems ----------------------------------------------------------------------------


def _unescape(field: str) -> str:
    r"""/proc/self/mounts writes space, tab, newline and backslash as octal (\040...)."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mounts(text: str) -> list[tuple[str, str, str]]:
    """(device, mount point, fstype) of each real filesystem in /proc/self/mounts; a mount
    point mounted over again counts once, as its last mount (the one statvfs sees)."""
    found: dict[str, tuple[str, str, str]] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        device, mountpoint, fstype = (_unescape(f) for f in fields[:3])
        found.pop(mountpoint, None)
        if fstype not in VIRTUAL_FILESYSTEMS:
            found[mountpoint] = (device, mountpoint, fstype)
    return list(found.values())


def may_hang(fstype: str) -> bool:
    return fstype in NETWORK_FILESYSTEMS or fstype == "fuse" or fstype.startswith("fuse.")


class StatFs:
    """statvfs, in a thread of its own with a timeout for filesystems that may hang, at most
    one such thread per mount point: a mount whose thread is still stuck is skipped."""

    def __init__(
        self,
        timeout: float = NETWORK_STATFS_TIMEOUT,
        statvfs: Callable[[str], os.statvfs_result] = os.statvfs,
    ):
        self.timeout = timeout
        self.statvfs = statvfs
        self._stuck: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    def __call__(self, mountpoint: str, fstype: str) -> os.statvfs_result | None:
        if not may_hang(fstype):
            try:
                return self.statvfs(mountpoint)
            except OSError:
                return None
        with self._lock:
            stuck = self._stuck.get(mountpoint)
            if stuck is not None and stuck.is_alive():
                return None
            self._stuck.pop(mountpoint, None)
        result: list[os.statvfs_result] = []

        def ask() -> None:
            with contextlib.suppress(OSError):
                result.append(self.statvfs(mountpoint))

        thread = threading.Thread(target=ask, name=f"statvfs {mountpoint}", daemon=True)
        thread.start()
        thread.join(self.timeout)
        if thread.is_alive():
            with self._lock:
                self._stuck[mountpoint] = thread
            return None
        return result[0] if result else None

    def stuck(self) -> list[str]:
        """The mount points whose statvfs has not returned (a hung server)."""
        with self._lock:
            return sorted(m for m, t in self._stuck.items() if t.is_alive())


def filesystem_samples(mounts: Iterable[tuple[str, str, str]], statfs: StatFs) -> Iterator[Sample]:
    for device, mountpoint, fstype in mounts:
        stat = statfs(mountpoint, fstype)
        if stat is None or stat.f_blocks == 0:
            continue  # gone, hung, or nothing to measure (autofs-like placeholders)
        labels = labels_of(device=device, mountpoint=mountpoint, fstype=fstype)
        size = stat.f_frsize or stat.f_bsize
        yield Sample("node_filesystem_size_bytes", labels, stat.f_blocks * size)
        yield Sample("node_filesystem_free_bytes", labels, stat.f_bfree * size)
        yield Sample("node_filesystem_avail_bytes", labels, stat.f_bavail * size)


# -- all of it ------------------------------------------------------------------------------

_STATFS = StatFs()


def _read(path: Path) -> str | None:
    """A /proc file's text, or None where this kernel has none (or refuses it: PSI turned off
    at boot answers EOPNOTSUPP)."""
    try:
        return path.read_text()
    except OSError:
        return None


def collect_node(
    proc: Path = Path("/proc"),
    sys: Path = Path("/sys"),
    mounts: Path | None = None,
    statfs: StatFs | None = None,
    filesystems: bool = True,
    pressure: bool = True,
) -> list[Sample]:
    """Everything measured of this node, now. `mounts` is the mount table to read (default:
    PROC/self/mounts); `statfs` the statvfs to use (default: one shared by the process, which
    remembers hung mounts across calls). Files this kernel lacks are skipped. Without
    `filesystems` and `pressure` (the live view draws neither), those are not read."""
    samples: list[Sample] = []
    if (text := _read(proc / "stat")) is not None:
        samples += parse_stat(text)
    if (text := _read(proc / "loadavg")) is not None:
        samples += parse_loadavg(text)
    if (text := _read(proc / "meminfo")) is not None:
        samples += parse_meminfo(text)
    for resource in ("cpu", "memory", "io") if pressure else ():
        if (text := _read(proc / "pressure" / resource)) is not None:
            samples += parse_pressure(resource, text)
    if (text := _read(proc / "diskstats")) is not None:
        samples += parse_diskstats(text, whole_disks(sys))
    if (text := _read(proc / "net" / "dev")) is not None:
        samples += network_samples(parse_net_dev(text))
    if filesystems and (text := _read(mounts or proc / "self" / "mounts")) is not None:
        samples += filesystem_samples(parse_mounts(text), statfs or _STATFS)
    return samples
