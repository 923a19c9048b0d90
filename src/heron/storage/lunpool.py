"""LUN-backed pools: the array makes the LUNs, Heron finds them by a scan and runs VMs on them.

`iscsi`: the LUNs of one target, reached by QEMU's own initiator (libiscsi): no host iSCSI
session, no device nodes, nothing to clean up on a node that dies. `block`: block devices
every node sees under the same name, e.g. FC LUNs through multipath (`/dev/mapper/mpath*`)
or `/dev/disk/by-id/wwn-*`; QEMU opens them as host devices.

Volumes of these pools are raw: the LUN is the disk. Deleting one forgets it; the array keeps
its data until the administrator removes the LUN there.
"""

import asyncio
import os
import re
import stat
from pathlib import Path
from typing import Any

from heron.models.storage import Volume
from heron.storage import qemuimg
from heron.storage.driver import Capabilities, Found, PoolDriver, StorageError
from heron.storage.qemuimg import QemuImgError

_TARGET = re.compile(r"^Target:(\S+)")
_DISK_LUN = re.compile(r"^\s*Lun:(\d+)\s+Type:DIRECT_ACCESS")
# What the array made: every node reaches it, Heron only finds the LUNs and runs VMs on them.
LUNS = Capabilities(scanned=True)


class IscsiPool(PoolDriver):
    CAPABILITIES = LUNS

    def portal(self) -> str:
        portal = str(self.pool.portal)
        return portal if ":" in portal.rsplit("]", 1)[-1] else f"{portal}:3260"

    def url(self, lun: int | str) -> str:
        return f"iscsi://{self.portal()}/{self.pool.target}/{lun}"

    def protocol(self, volume: Volume) -> dict[str, Any]:
        return {
            "driver": "iscsi",
            "transport": "tcp",
            "portal": self.portal(),
            "target": str(self.pool.target),
            "lun": int(volume.location),
            # The same initiator name on every node: the array's ACL names the cluster.
            "initiator-name": "iqn.2026-11.org.heron:initiator",
        }

    def image(self, volume: Volume) -> str:
        return self.url(volume.location)

    async def scan(self) -> list[Found]:
        proc = await asyncio.create_subprocess_exec(
            "iscsi-ls", "-s", f"iscsi://{self.portal()}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        if proc.returncode != 0:
            message = err.decode(errors="replace").strip() or out.decode(errors="replace")
            raise StorageError(f"cannot list the LUNs at {self.portal()}: {message.strip()}")
        luns = disk_luns(out.decode(errors="replace"), str(self.pool.target))
        if luns is None:
            raise StorageError(f"portal {self.portal()} offers no target {self.pool.target}")
        found = []
        for lun in luns:
            try:
                size = int((await qemuimg.info(self.url(lun), "raw"))["virtual-size"])
            except QemuImgError as exc:
                raise StorageError(f"LUN {lun}: {exc}") from exc
            found.append(Found(name=f"lun{lun}", size=size, location=str(lun)))
        return found


def disk_luns(listing: str, target: str) -> list[int] | None:
    """The disk LUNs of `target` in `iscsi-ls -s` output; None if the target is not there."""
    luns: list[int] | None = None
    current = None
    for line in listing.splitlines():
        if m := _TARGET.match(line):
            current = m.group(1)
            if current == target and luns is None:
                luns = []
        elif current == target and (m := _DISK_LUN.match(line)) and luns is not None:
            luns.append(int(m.group(1)))
    return luns


class BlockPool(PoolDriver):
    CAPABILITIES = LUNS

    def protocol(self, volume: Volume) -> dict[str, Any]:
        return {"driver": "host_device", "filename": volume.location, "aio": "threads"}

    def image(self, volume: Volume) -> str:
        return volume.location

    async def scan(self) -> list[Found]:
        root = Path(str(self.pool.path))
        if not root.is_dir():
            raise StorageError(f"pool {self.pool.name}: {root} is not a directory on this node")
        found = []
        for path in sorted(root.glob(str(self.pool.pattern))):
            try:
                if not stat.S_ISBLK(path.stat().st_mode):
                    continue
                fd = os.open(path, os.O_RDONLY)
                try:
                    size = os.lseek(fd, 0, os.SEEK_END)
                finally:
                    os.close(fd)
            except OSError:
                continue  # a device that went away or cannot be opened is not offered
            found.append(Found(name=volume_name(path.name), size=size, location=str(path)))
        return found


def volume_name(device: str) -> str:
    """A volume name from a device's name: lower case, other characters as dashes."""
    name = re.sub(r"[^a-z0-9._-]+", "-", device.lower())
    return name[:63].strip("-._") or "device"
