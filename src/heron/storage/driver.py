"""One interface over every kind of pool: what the agent asks of a pool, whatever holds it.

A driver answers two questions for a volume: how QEMU reaches its bytes (a blockdev protocol
node: a file, an iSCSI LUN, a host block device, an RBD image, an NBD export) and how qemu-img
names it; and it carries out what the pool type allows (create, import, grow, delete, scan).
The image format (qcow2 or raw) is layered on top by the caller, the same for every type.
It also says what its pools can do (`Capabilities`): callers decide by that, never by the
pool's type. Which driver serves which type is `storage/registry.py`.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from heron.configdb import ConfigDB

# The storage family's root; pool drivers and their callers import it from here.
from heron.errors import StorageError as StorageError
from heron.models.storage import Pool, PoolSpec, Volume, VolumeFormat
from heron.storage.qemuimg import Progress


@dataclass(frozen=True)
class VolumeSnapshot:
    """One snapshot of one volume, as its pool keeps it."""

    name: str
    created_at: float
    size: int | None  # bytes that only this snapshot holds; None when the pool cannot tell


@dataclass(frozen=True)
class Found:
    """A volume a scan found on the array (a LUN, a block device)."""

    name: str
    size: int
    location: str


class Capabilities(BaseModel):
    """What the pools of a driver can do, as the rest of Heron needs to know it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    shared: bool = Field(
        default=True,
        description="every node sees the same volumes: a VM may run on any node and a live "
        "migration copies no disk (otherwise a volume is one node's, and a migration copies it)",
    )
    scanned: bool = Field(
        default=False,
        description="its volumes are the array's LUNs, found by a scan: Heron never creates, "
        "grows or deletes them there",
    )
    formats: tuple[VolumeFormat, ...] = Field(
        default=(VolumeFormat.raw,),
        description="the image formats its volumes may have; the first is a new volume's default",
    )
    mounted: bool = Field(
        default=False, description="each node mounts the pool itself, under <state>/mnt/<pool>"
    )
    member_disks: bool = Field(
        default=False,
        description="Heron's own store over disks its member nodes give, each running heron-io: "
        "volumes are placed over those disks, rebuilt and rebalanced among them, their "
        "redundancy reported; its capacity is the disks' after redundancy",
    )
    owned: bool = Field(
        default=False,
        description="a volume has one writing node, its owner, which follows its VM: claimed "
        "before QEMU opens it, handed over at the switch of a live migration",
    )
    grows_by_reconnect: bool = Field(
        default=False,
        description="QEMU learns a grown volume's size only on a new connection (NBD)",
    )
    native_snapshots: bool = Field(
        default=False,
        description="the pool snapshots and clones its volumes itself (heron-io, Ceph), "
        "whatever their format; otherwise only qcow2 volumes have snapshots, inside the image",
    )
    linked_clones: bool = Field(
        default=False,
        description="clones share their source's blocks copy-on-write (qcow2 overlays, or "
        "the pool's own clones); a full copy otherwise",
    )
    memory_state: bool = Field(
        default=False,
        description="holds the memory state of snapshots of VMs without a qcow2 disk: a "
        "volume Heron makes with a qcow2 image in it (a qcow2 file, or qcow2 written into a "
        "raw volume that QEMU reaches over NBD)",
    )


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

    # Snapshots and clones done by the pool itself (`native_snapshots`); qcow2 volumes of the
    # other pools have theirs inside the image, taken over QMP or qemu-img by the caller.

    async def snapshot_create(self, volumes: Sequence[Volume], name: str) -> None:
        """Snapshot `volumes` (all of this pool) as `name`, all at one instant. The caller
        makes that instant: the VM paused with its disks flushed, or not running. All of
        them or none: on an error no volume keeps a snapshot `name`."""
        raise StorageError(self._not_here("its volumes have no snapshots of their own"))

    async def snapshot_delete(self, volume: Volume, name: str) -> None:
        """Delete the snapshot `name` of `volume`, its VM running or not; the others stay."""
        raise StorageError(self._not_here("its volumes have no snapshots of their own"))

    async def snapshot_revert(self, volume: Volume, name: str) -> None:
        """Make `volume`'s data that of its snapshot `name` (which stays); no VM has it open."""
        raise StorageError(self._not_here("its volumes have no snapshots of their own"))

    async def snapshots(self, volume: Volume) -> list[VolumeSnapshot]:
        """The snapshots of `volume`, oldest first."""
        return []

    async def clone(
        self,
        source: Volume,
        snapshot: str | None,
        target: Volume,
        linked: bool,
        progress: Progress | None,
    ) -> None:
        """Make `target` (a record of this pool, already written) a copy of `source`'s data,
        or of its snapshot `snapshot`: `linked`, it shares the source's blocks copy-on-write
        (`target.origin` names them, and `source` is not deleted while it does); otherwise a
        full copy."""
        raise StorageError(self._not_here("its volumes are not cloned by the pool"))

    def allocation(self, volume: Volume) -> int | None:
        return None

    def capacity(self) -> tuple[int, int] | None:
        """(total, free) bytes, when the pool can tell."""
        return None

    async def scan(self) -> list[Found]:
        raise StorageError(self._not_here("its volumes are created, not scanned"))

    def _not_here(self, why: str) -> str:
        return f"pool {self.pool.name} ({self.pool.type}): {why}"
