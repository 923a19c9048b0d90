"""One interface over every kind of pool: what the agent asks of a pool, whatever holds it.

A driver answers two questions for a volume: how QEMU reaches its bytes (a blockdev protocol
node: a file, an iSCSI LUN, a host block device, an RBD image, an NBD export) and how qemu-img
names it; and it carries out what the pool type allows (create, import, grow, delete, scan).
The image format (qcow2 or raw) is layered on top by the caller, the same for every type.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heron.configdb import ConfigDB

# The storage family's root; pool drivers and their callers import it from here.
from heron.errors import StorageError as StorageError
from heron.models.storage import Pool, Volume
from heron.storage.qemuimg import Progress


@dataclass(frozen=True)
class Found:
    """A volume a scan found on the array (a LUN, a block device)."""

    name: str
    size: int
    location: str


class PoolDriver:
    def __init__(self, pool: Pool, state_dir: Path):
        self.pool = pool
        self.state_dir = state_dir

    def protocol(self, volume: Volume) -> dict[str, Any]:
        """QEMU's blockdev protocol node for the volume's bytes."""
        raise NotImplementedError

    def image(self, volume: Volume) -> str:
        """The name qemu-img knows the volume by."""
        raise NotImplementedError

    async def prepare(self) -> None:
        """Make the pool usable on this node (e.g. mount it); cheap when it already is."""

    async def attach(self, volume: Volume, node: str, incoming: bool = False) -> None:
        """Before a VM on `node` (this node) opens the volume; `incoming`: for a live
        migration to this node, which takes the volume over only at the switch."""

    async def create(self, volume: Volume) -> None:
        raise StorageError(self._not_here("new volumes are made on the array; scan the pool"))

    async def import_image(
        self, volume: Volume, source: str, progress: Progress | None, source_format: str | None
    ) -> int:
        """Copy an image (anything qemu-img reads) into the volume; returns its size."""
        raise StorageError(self._not_here("images cannot be imported into it"))

    async def resize(self, volume: Volume, size: int) -> None:
        raise StorageError(self._not_here("grow the LUN on the array, then scan the pool"))

    async def delete(self, volume: Volume) -> None:
        """Remove the volume's data (LUN-backed pools only forget it: the array keeps it)."""

    def allocation(self, volume: Volume) -> int | None:
        return None

    def capacity(self) -> tuple[int, int] | None:
        """(total, free) bytes, when the pool can tell."""
        return None

    async def scan(self) -> list[Found]:
        raise StorageError(self._not_here("its volumes are created, not scanned"))

    def _not_here(self, why: str) -> str:
        return f"pool {self.pool.name} ({self.pool.type}): {why}"


def driver_for(pool: Pool, state_dir: Path, db: ConfigDB | None = None) -> PoolDriver:
    """The driver of `pool` on this node; `db` lets ardfs pools change their volume records."""
    # Imported here: the drivers import this module for the base class.
    from heron.storage.ardfspool import ArdfsPool
    from heron.storage.dirpool import DirPool, NfsPool
    from heron.storage.lunpool import BlockPool, IscsiPool
    from heron.storage.rbdpool import RbdPool

    kinds: dict[str, type[PoolDriver]] = {
        "dir": DirPool,
        "nfs": NfsPool,
        "iscsi": IscsiPool,
        "block": BlockPool,
        "rbd": RbdPool,
    }
    if pool.type == "ardfs":
        return ArdfsPool(pool, state_dir, db)
    return kinds[pool.type](pool, state_dir)
