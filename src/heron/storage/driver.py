"""One interface over every kind of pool: what the agent asks of a pool, whatever holds it.

A driver answers two questions for a volume: how QEMU reaches its bytes (a blockdev protocol
node: a file, an iSCSI LUN, a host block device, an RBD image, an NBD export) and how qemu-img
names it; and it carries out what the pool type allows (create, import, grow, delete, scan).
The image format (qcow2 or raw) is layered on top by the caller, the same for every type.
It also says what its pools can do (`Capabilities`): callers decide by that, never by the
pool's type. Which driver serves which type is `storage/registry.py`.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from heron.configdb import ConfigDB
from heron.models.storage import Pool, PoolSpec, Volume, VolumeFormat
from heron.storage.qemuimg import Progress


class StorageError(Exception):
    """A pool operation failed or is not possible for this pool type; the message says why."""


@dataclass(frozen=True)
class Found:
    """A volume a scan found on the array (a LUN, a block device)."""

    name: str
    size: int
    location: str


@dataclass(frozen=True)
class Capabilities:
    """What the pools of a driver can do, as the rest of Heron needs to know it.

    - `shared`: every node sees the same volumes, so a VM may run on any node and a live
      migration copies no disk; otherwise a volume is one node's and a migration copies it.
    - `scanned`: the volumes are the array's LUNs, found by a scan; Heron never creates,
      grows or deletes them there.
    - `formats`: the image formats its volumes may have; the first is a new volume's default.
    - `mounted`: each node mounts the pool itself, under `<state>/mnt/<pool>`.
    - `member_disks`: Heron's own store over disks its member nodes give, each member running
      heron-io: volumes are placed over those disks, rebuilt and rebalanced among them, and
      their owner reports their redundancy; the pool's capacity is the disks' after it.
    - `owned`: a volume has one writing node, its owner, which follows its VM: claimed before
      QEMU opens it, handed over at the switch of a live migration (`storage/ownership.py`).
    - `grows_by_reconnect`: QEMU learns a grown volume's size only on a new connection.
    """

    shared: bool = True
    scanned: bool = False
    formats: tuple[VolumeFormat, ...] = (VolumeFormat.raw,)
    mounted: bool = False
    member_disks: bool = False
    owned: bool = False
    grows_by_reconnect: bool = False


class PoolDriver:
    CAPABILITIES: ClassVar[Capabilities] = Capabilities()

    def __init__(self, pool: Pool, state_dir: Path, db: ConfigDB | None = None):
        """`db` lets drivers that keep volume records (ardfs) change them."""
        self.pool = pool
        self.state_dir = state_dir
        self.db = db

    @classmethod
    def capabilities_of(cls, pool: PoolSpec) -> Capabilities:
        return cls.CAPABILITIES

    @property
    def capabilities(self) -> Capabilities:
        return self.capabilities_of(self.pool)

    @classmethod
    def definition_problem(cls, pool: PoolSpec) -> tuple[str, str] | None:
        """(field, reason) when a definition passes the model yet cannot work; else None."""
        return None

    def usable_capacity(self, raw: int) -> int:
        """How much of `raw` bytes of the pool's disks volumes can fill (after redundancy)."""
        return raw

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
