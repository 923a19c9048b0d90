"""Ceph RBD pools, for users who already run Ceph: each volume is an RBD image, opened by
QEMU's own librbd (no kernel mapping). Images are raw; Ceph provides thin provisioning,
replication and snapshots itself.

Tested where a Ceph cluster is reachable (see docs/operations.md): these machines have none.
"""

import asyncio
from typing import Any

from heron.models.storage import Volume
from heron.storage import qemuimg
from heron.storage.driver import Capabilities, PoolDriver, StorageError
from heron.storage.qemuimg import Progress


class RbdPool(PoolDriver):
    # Images are raw: Ceph itself thins, replicates and snapshots them.
    CAPABILITIES = Capabilities()

    def image_spec(self, volume: Volume) -> str:
        return f"{self.pool.rbd_pool}/{volume.name}"

    def protocol(self, volume: Volume) -> dict[str, Any]:
        node: dict[str, Any] = {
            "driver": "rbd",
            "pool": str(self.pool.rbd_pool),
            "image": volume.name,
        }
        if self.pool.user:
            node["user"] = self.pool.user
        if self.pool.conf:
            node["conf"] = self.pool.conf
        if self.pool.monitors:
            node["server"] = [_host_port(m) for m in self.pool.monitors]
        return node

    def image(self, volume: Volume) -> str:
        # qemu-img's rbd: syntax; ';' separates monitors and must be escaped inside it.
        name = f"rbd:{self.image_spec(volume)}"
        if self.pool.user:
            name += f":id={self.pool.user}"
        if self.pool.conf:
            name += f":conf={self.pool.conf}"
        if self.pool.monitors:
            name += ":mon_host=" + "\\;".join(self.pool.monitors)
        return name

    async def create(self, volume: Volume) -> None:
        await qemuimg.create(self.image(volume), "raw", volume.size)

    async def import_image(
        self, volume: Volume, source: str, progress: Progress | None, source_format: str | None
    ) -> int:
        fmt = source_format or await qemuimg.detect_format(source)
        await qemuimg.convert(source, fmt, self.image(volume), "raw", progress)
        size = int((await qemuimg.info(self.image(volume)))["virtual-size"])
        if volume.size > size:
            await qemuimg.resize(self.image(volume), "raw", volume.size)
            size = volume.size
        return size

    async def resize(self, volume: Volume, size: int) -> None:
        await qemuimg.resize(self.image(volume), "raw", size)

    async def delete(self, volume: Volume) -> None:
        args = ["rbd", "rm", self.image_spec(volume)]
        if self.pool.user:
            args += ["--id", self.pool.user]
        if self.pool.conf:
            args += ["-c", self.pool.conf]
        if self.pool.monitors:
            args += ["-m", ",".join(self.pool.monitors)]
        try:
            proc = await asyncio.create_subprocess_exec(
                *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
        except FileNotFoundError as exc:
            raise StorageError("deleting RBD images needs the rbd tool (ceph-common)") from exc
        _, err = await proc.communicate()
        message = err.decode(errors="replace").strip()
        if proc.returncode != 0 and "No such file" not in message:
            raise StorageError(f"rbd rm {self.image_spec(volume)}: {message}")


def _host_port(monitor: str) -> dict[str, str]:
    host, _, port = monitor.rpartition(":") if monitor.count(":") == 1 else (monitor, "", "")
    return {"host": host or monitor, "port": port or "6789"}
