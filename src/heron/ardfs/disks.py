"""This node's disks: is a directory the chunk store it should be, and does it still work.

A disk is labelled (`heron-disk` in its root) the first time this node serves it, and the node
remembers that in its own state, so a filesystem that is not mounted (an empty mount point)
is never served as a store whose chunks are all absent. While served, each disk is checked
every few seconds (maintenance.py): a disk that dies is taken out of service instead of
failing chunk by chunk.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

DISK_LABEL = "heron-disk"  # in a disk's root: which disk it is


def claim_disk(disk: str, root: Path, state_dir: Path) -> str | None:
    """Check that `root` holds the chunk store of `disk`; None if so, else why not.

    A disk is labelled the first time this node serves it, and the node remembers that in
    its own state. A labelled disk whose label is gone lost its contents, typically a
    filesystem that is not mounted: served, its empty directory would read as zeroes where
    the volume has data."""
    label, seen = root / DISK_LABEL, state_dir / "disks" / disk
    try:
        found = label.read_text().strip()
    except FileNotFoundError:
        if seen.exists():
            return f"its label {label} is gone: the filesystem is not mounted, or was replaced"
        root.mkdir(parents=True, exist_ok=True)
        tmp = label.with_suffix(".tmp")
        with open(tmp, "w") as handle:
            handle.write(disk + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(label)
        seen.parent.mkdir(parents=True, exist_ok=True)
        seen.touch()
        return None
    except OSError as exc:
        return f"its label cannot be read: {exc}"
    if found != disk:
        return f"it holds disk {found}, not {disk}"
    seen.parent.mkdir(parents=True, exist_ok=True)
    seen.touch()
    return None


DISK_PROBE = "heron-disk.probe"  # in a disk's root: written and synced by each disk check


def check_disk(disk: str, root: Path) -> tuple[int, int]:
    """(total, free) bytes of a served disk that still works; OSError if it does not.

    Blocking (it waits for the device): run it in a thread. The label must still be there and
    name the disk (the filesystem was not unmounted or replaced), and a small write must reach
    the device: a filesystem shut down by errors, or remounted read-only by them, still
    answers statvfs, and only writes fail. A full disk is not a failed one."""
    label = root / DISK_LABEL
    try:
        found = label.read_text().strip()
    except FileNotFoundError:
        raise OSError(errno.ENOENT, f"its label {label} is gone: not mounted?") from None
    if found != disk:
        raise OSError(errno.EIO, f"its label names disk {found!r}")
    try:
        fd = os.open(root / DISK_PROBE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"%d\n" % time.time_ns())
            os.fdatasync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
    fs = os.statvfs(root)
    return fs.f_blocks * fs.f_frsize, fs.f_bavail * fs.f_frsize
