"""ARDFS pools: volumes served by the node's own heron-io over NBD on a unix socket.

The node agent keeps heron-io's configuration in line with the ConfigDB (`agent/ardfs.py`);
this driver only names volumes for QEMU and qemu-img and waits until heron-io serves them.
A volume is exported by heron-io under its Heron id. It is thin: creating one is writing its
record; an image is copied into it with qemu-img once heron-io serves it at the right size.
Its `owner` is the node whose heron-io writes it: the node that runs its VM claims it (owner
and epoch + 1) before QEMU starts, and the chunk stores refuse the previous owner's writes.
"""

import asyncio
import time
from pathlib import Path
from typing import Any

from heron.configdb import ConfigDB, keys
from heron.models.storage import ArdfsMember, ArdfsTombstone, Pool, Volume
from heron.storage import qemuimg
from heron.storage.driver import Capabilities, PoolDriver, StorageError
from heron.storage.ownership import claim
from heron.storage.qemuimg import Progress, QemuImgError
from heron.util.wait import until

SERVE_TIMEOUT = 60.0  # heron-io (re)loads its configuration and claims in well under this
SECTOR = 4096  # heron-io volumes are a whole number of 4 KiB sectors
MEMBERS_PATIENCE = 30.0


def socket_path(state_dir: Path, pool: str) -> Path:
    return state_dir / "ardfs" / pool / "nbd.sock"


class ArdfsPool(PoolDriver):
    CAPABILITIES = Capabilities(member_disks=True, owned=True, grows_by_reconnect=True)

    def __init__(self, pool: Pool, state_dir: Path, db: ConfigDB | None = None):
        super().__init__(pool, state_dir, db)
        self.socket = socket_path(state_dir, pool.name)

    def usable_capacity(self, raw: int) -> int:
        return int(raw * self.pool.redundancy.share)

    def protocol(self, volume: Volume) -> dict[str, Any]:
        return {
            "driver": "nbd",
            "server": {"type": "unix", "path": str(self.socket)},
            "export": volume.id,
            # heron-io restarts (membership changes, upgrades) without the guest noticing.
            "reconnect-delay": 30,
        }

    def image(self, volume: Volume) -> str:
        return f"nbd+unix:///{volume.id}?socket={self.socket}"

    async def attach(self, volume: Volume, node: str, incoming: bool = False) -> None:
        if self.db is None:
            raise StorageError("an ardfs volume is attached only through the node agent")
        if incoming:
            await self.wait_served(volume)  # exported here as the standby
        else:
            await self.wait_served(await claim(self.db, volume.id, node))

    async def create(self, volume: Volume) -> None:
        await self.wait_members()
        await self.wait_served(volume, volume.size)

    async def import_image(
        self, volume: Volume, source: str, progress: Progress | None, source_format: str | None
    ) -> int:
        fmt = source_format or await qemuimg.detect_format(source)
        size = max(volume.size, int((await qemuimg.info(source))["virtual-size"]))
        size = -(-size // SECTOR) * SECTOR
        if size != volume.size:
            await self._set_size(volume, size)
        await self.wait_members()
        await self.wait_served(volume, size)
        # A new volume reads as zeroes: qemu-img need not write them.
        await qemuimg.convert(
            source, fmt, self.image(volume), "raw", progress, existing_zero_target=True
        )
        return size

    async def resize(self, volume: Volume, size: int) -> None:
        size = -(-size // SECTOR) * SECTOR
        await self._set_size(volume, size)
        await self.wait_served(volume, size)

    async def delete(self, volume: Volume) -> None:
        """Mark it deleted: each member's agent removes its chunks once heron-io let it go."""
        if self.db is None:
            raise StorageError("an ardfs volume is deleted only through the node agent")
        mark = ArdfsTombstone(pool=self.pool.name, volume=volume.id, deleted_at=time.time())
        await self.db.put(keys.ardfs_deleted(self.pool.name, volume.id), mark)

    async def wait_members(self, patience: float = MEMBERS_PATIENCE) -> None:
        """Until every member's heron-io accepts connections (they restart when the pool's
        membership changes), so a new volume is not written degraded from its first block;
        after `patience` go on anyway: writes then record what the absent ones miss."""
        assert self.db is not None
        prefix = f"{keys.ARDFS_MEMBERS}{self.pool.name}/"
        db = self.db

        async def all_listen() -> bool:  # heron-io processes are (re)starting
            members = [e.value for e in await db.list(ArdfsMember, prefix)]
            listening = await asyncio.gather(*(_listens(m.address) for m in members))
            return bool(members) and all(listening)

        await until(all_listen, patience, 0.2)

    async def wait_served(self, volume: Volume, size: int | None = None) -> None:
        """Until this node's heron-io exports the volume (at `size`, if given)."""
        why = ""

        async def served() -> bool:  # heron-io applies configuration changes in the background
            nonlocal why
            try:
                found = int((await qemuimg.info(self.image(volume)))["virtual-size"])
            except QemuImgError as exc:
                why = str(exc)
                return False
            why = f"served at {found} bytes, not {size}"
            return size is None or found == size

        if await until(served, SERVE_TIMEOUT, 0.2) is None:
            raise StorageError(f"heron-io on this node does not serve {volume.name}: {why}")

    async def _set_size(self, volume: Volume, size: int) -> None:
        if self.db is None:
            raise StorageError("an ardfs pool changes volumes only through the node agent")

        def change(current: Volume) -> Volume:
            return current.model_copy(update={"size": size})

        await self.db.update(Volume, keys.volume(volume.id), change)


async def _listens(address: str | None) -> bool:
    if not address:
        return False
    host, _, port = address.rpartition(":")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), 1)
    except (OSError, TimeoutError, ValueError):
        return False
    writer.close()
    return True
