"""The device class of an ardfs disk (nvme, ssd, hdd), told from the kernel.

An ardfs disk is a directory. Its class is the class of the block device under it: the
filesystem's device (`st_dev` of the directory, or of its nearest existing parent, looked up
in `/sys/dev/block/MAJ:MIN`; a filesystem with an anonymous device, btrfs say, by its source
in `/proc/self/mountinfo`), followed down to the disks that do the work:

- a partition → the disk it is on;
- a loop device → the device under its backing file;
- device-mapper, md (anything with `slaves/`) → its slaves: their class when they agree; when
  they differ (a dm-cache, say), the slowest of them, and the note says so.

Then: `queue/rotational` 1 → hdd; a name starting with nvme → nvme; else ssd. What cannot be
told (tmpfs, overlayfs, NFS, a sysfs without the device) is *assumed* ssd, and the result says
why: the administrator sets the class of such a disk (PATCH /pools/{name}/disks/{disk}).
ssd because most such directories are memory or network filesystems, whose latency is no
spinning disk's; a wrong guess only ever moves data once the class is set.

A virtual machine's disks say what their hypervisor tells the guest: virtio-blk often says
rotational whatever is behind it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from heron.models.storage import ClassSource, DeviceClass

SLOWEST_FIRST: tuple[DeviceClass, ...] = ("hdd", "ssd", "nvme")
DEPTH = 8  # loop on dm on loop ...: past this, say it cannot be told


@dataclass(frozen=True)
class Detected:
    device_class: DeviceClass
    source: ClassSource  # detected or assumed
    note: str


class Unknown(Exception):
    """The kernel does not tell the class; the message says why."""


def detect(
    path: str | Path, sys_root: Path = Path("/sys"), mountinfo: Path = Path("/proc/self/mountinfo")
) -> Detected:
    """The class of the device under the directory `path` (which need not exist yet: its
    nearest existing parent's device is the one it will be on). Never raises."""
    try:
        device_class, note = _of_path(Path(path), sys_root, mountinfo, 0)
    except Unknown as exc:
        return Detected("ssd", "assumed", f"{exc}; ssd assumed: set the class if it is not")
    return Detected(device_class, "detected", note)


def detect_block(
    name: str, sys_root: Path = Path("/sys"), mountinfo: Path = Path("/proc/self/mountinfo")
) -> Detected:
    """The class of the block device `name` (sda, nvme0n1p2, dm-0, loop3). Never raises."""
    try:
        device_class, note = _of_block(sys_root / "class" / "block" / name, sys_root, mountinfo, 0)
    except Unknown as exc:
        return Detected("ssd", "assumed", f"{exc}; ssd assumed: set the class if it is not")
    return Detected(device_class, "detected", note)


def _of_path(path: Path, sys_root: Path, mountinfo: Path, depth: int) -> tuple[DeviceClass, str]:
    where = path
    while True:
        try:
            st = os.stat(where)
            break
        except FileNotFoundError:
            if where.parent == where:
                raise Unknown(f"{path}: no part of it exists") from None
            where = where.parent
        except OSError as exc:
            raise Unknown(f"{path}: {exc.strerror}") from None
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    entry = sys_root / "dev" / "block" / f"{major}:{minor}"
    if major == 0 or not entry.exists():
        entry = _by_mount_source(where, sys_root, mountinfo)
    return _of_block(entry, sys_root, mountinfo, depth)


def _by_mount_source(where: Path, sys_root: Path, mountinfo: Path) -> Path:
    """The sysfs entry of the device a filesystem without a block device number of its own
    (btrfs, or one this sysfs does not list) names as its source in mountinfo."""
    target = os.path.realpath(where)
    best: tuple[str, str, str] | None = None  # mount point, fs type, source
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError as exc:
        raise Unknown(f"{mountinfo}: {exc.strerror}") from None
    for line in lines:
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        point = fields[4].replace("\\040", " ")
        fstype, source = line.split(" - ", 1)[1].split()[:2]
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best[0])):
            best = (point, fstype, source)
    if best is None:
        raise Unknown(f"{where}: on no mount in {mountinfo}")
    point, fstype, source = best
    if not source.startswith("/dev/"):
        raise Unknown(f"{where} is on {fstype} ({source} at {point}), no block device")
    name = os.path.basename(os.path.realpath(source))
    entry = sys_root / "class" / "block" / name
    if not entry.exists():
        raise Unknown(f"{where} is on {source}, which {sys_root} does not list")
    return entry


def _of_block(entry: Path, sys_root: Path, mountinfo: Path, depth: int) -> tuple[DeviceClass, str]:
    """The class of the block device whose sysfs entry (a link into /sys/devices) is
    `entry`, following partitions, loop devices and stacked devices to what is under them."""
    if depth > DEPTH:
        raise Unknown(f"{entry.name}: devices stacked deeper than {DEPTH}")
    if not entry.exists():
        raise Unknown(f"{entry.name}: not in {sys_root}")
    device = Path(os.path.realpath(entry))
    if (device / "partition").exists():
        device = device.parent  # sda1 lives in sda's directory
    name = device.name
    backing = device / "loop" / "backing_file"
    if backing.exists():
        file = backing.read_text().strip()
        found, how = _of_path(Path(file), sys_root, mountinfo, depth + 1)
        return found, f"{name} on {file}: {how}"
    slaves = sorted((device / "slaves").iterdir()) if (device / "slaves").is_dir() else []
    if slaves:
        under = [(s.name, *_of_block(s, sys_root, mountinfo, depth + 1)) for s in slaves]
        classes = {c for _, c, _ in under}
        slowest = next(c for c in SLOWEST_FIRST if c in classes)
        if len(classes) == 1:
            return slowest, f"{name} over {', '.join(n for n, _, _ in under)}: {under[0][2]}"
        mixed = ", ".join(f"{n} {c}" for n, c, _ in under)
        return slowest, f"{name} over devices of several classes ({mixed}): the slowest"
    try:
        rotational = (device / "queue" / "rotational").read_text().strip()
    except OSError:
        raise Unknown(f"{name}: the kernel gives no queue/rotational") from None
    if rotational == "1":
        return "hdd", f"{name}: rotational"
    if name.startswith("nvme"):
        return "nvme", f"{name}: NVMe, not rotational"
    return "ssd", f"{name}: not rotational"
