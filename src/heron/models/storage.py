"""Pools and the volumes in them."""

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

from heron.models.common import Name, Record

# An ardfs disk's id: chosen by Heron (d + 8 hex digits) or given by older releases.
DISK_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,16}$"
DiskId = Annotated[str, Field(pattern=DISK_ID_PATTERN)]


class VolumeFormat(StrEnum):
    qcow2 = "qcow2"
    raw = "raw"


PoolType = Literal["dir", "nfs", "iscsi", "block", "rbd", "ardfs"]

# The kind of device an ardfs disk is on. Detected by its node's agent from the kernel
# (storage/devclass.py), settable by an administrator; a pool may ask for one.
DeviceClass = Literal["nvme", "ssd", "hdd"]
DEVICE_CLASSES: tuple[DeviceClass, ...] = ("nvme", "ssd", "hdd")

_PROTECTION = re.compile(r"^(?:rf(?P<copies>[1-3])|ec(?P<data>[23])\+1)$")


@dataclass(frozen=True)
class Protection:
    """How an ardfs pool keeps each block: `copies` whole copies (rfN), or `data` data
    shards and one parity shard (ecD+1). The one reading of a pool's `protection` text."""

    copies: int = 0
    data: int = 0

    @classmethod
    def parse(cls, text: str) -> "Protection":
        found = _PROTECTION.match(text)
        if found is None:
            raise ValueError(f"protection {text!r} is none of rf1..rf3, ec2+1, ec3+1")
        if found["copies"]:
            return cls(copies=int(found["copies"]))
        return cls(data=int(found["data"]))

    @property
    def erasure_coded(self) -> bool:
        return self.data > 0

    @property
    def width(self) -> int:
        """How many disks the copies or shards of each block take."""
        return self.data + 1 if self.erasure_coded else self.copies

    @property
    def share(self) -> float:
        """The part of the disks' raw space that volumes can fill; the rest is redundancy."""
        return self.data / (self.data + 1) if self.erasure_coded else 1 / self.copies

    def label(self) -> str:
        return f"ec{self.data}+1" if self.erasure_coded else f"rf{self.copies}"


class PoolSpec(Record):
    """Where volumes live. By type:

    - `dir`: a directory on each node (local) or one mount every node sees (`shared`); `path`
      None means the node's own `<state>/pools/<name>`.
    - `nfs`: an NFS export (`server`, `export`, mount `options`) that every node mounts itself.
    - `iscsi`: the LUNs of one target (`portal`, `target` IQN), reached by QEMU's own initiator.
    - `block`: block devices every node sees, e.g. FC/multipath LUNs: those in `path` whose
      names match `pattern` (`/dev/mapper`, `mpath*`).
    - `ardfs`: Heron's own distributed block storage over the disks its nodes contribute
      (`protection`: rf1..rf3 replicas, or ec2+1 / ec3+1 erasure coding).
    - `rbd`: images in a Ceph pool (`rbd_pool`; `monitors`, `user` and a ceph.conf `conf`
      naming the keyring, or the host's /etc/ceph/ceph.conf).

    LUN-backed pools (iscsi, block) hold what the array made: their volumes are found by a
    scan, not created. Every type but a local `dir` is shared: a VM on it may run anywhere.
    """

    name: Name
    type: PoolType = "dir"
    path: str | None = Field(
        default=None,
        pattern=r"^/",
        description="dir: the directory (omitted: each node's <state>/pools/<name>); "
        "block: where the device nodes are",
    )
    shared: bool = Field(
        default=False, description="every node sees the same volumes (always, but for dir)"
    )
    server: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9.:\[\]-]+$", description="nfs: the server"
    )
    export: str | None = Field(default=None, pattern=r"^/", description="nfs: exported path")
    options: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9=,._-]+$",
        description="nfs: mount options (default vers=4.2,hard,noatime)",
    )
    portal: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9.\[\]:-]+$", description="iscsi: host[:port]"
    )
    target: str | None = Field(
        default=None, pattern=r"^(iqn|eui|naa)\.[A-Za-z0-9.:-]+$", description="iscsi: target"
    )
    pattern: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9*?._-]+$", description="block: device names (glob)"
    )
    rbd_pool: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9._-]+$", description="rbd: the Ceph pool"
    )
    monitors: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9.\[\]-]+(:[0-9]+)?$")]] = Field(
        default_factory=list, max_length=16, description="rbd: monitors, host[:port]"
    )
    user: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9._-]+$", description="rbd: Ceph user (id)"
    )
    conf: str | None = Field(default=None, pattern=r"^/", description="rbd: ceph.conf")
    protection: str = Field(
        default="rf2",
        pattern=r"^(rf[1-3]|ec[23]\+1)$",
        description="ardfs: rf1..rf3 (copies) or ec2+1 / ec3+1 (erasure coding)",
    )
    rebuild_grace_s: float = Field(
        default=600,
        ge=0,
        le=7 * 24 * 3600,
        description="ardfs: how long a member node may be down before the leader moves "
        "the copies its disks held onto the other disks",
    )
    device_class: DeviceClass | None = Field(
        default=None,
        description="ardfs: the class of disk (nvme, ssd, hdd) its volumes are placed on, "
        "moved and rebuilt onto; its capacity counts only those disks. None: any disk",
    )

    @model_validator(mode="before")
    @classmethod
    def _shared_unless_local(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("type", "dir") != "dir":
            data = {**data, "shared": True}
        return data

    @model_validator(mode="after")
    def _fields_of_type(self) -> "PoolSpec":
        missing = [f for f in _NEEDS[self.type] if not getattr(self, f)]
        if missing:
            raise ValueError(f"pool type {self.type} needs {', '.join(missing)}")
        return self

    @field_validator("device_class")
    @classmethod
    def _class_of_ardfs(cls, value: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("type", "dir")
        if value is not None and kind != "ardfs":
            raise ValueError(f"applies to ardfs pools (placed on their own disks), not {kind}")
        return value

    def takes(self, disk: "ArdfsDisk") -> bool:
        """ardfs: whether volumes may be placed on `disk`: any disk when the pool asks for no
        class, else only a disk of its class (one whose class is not told yet is not)."""
        return of_class(self.device_class, disk)

    @property
    def redundancy(self) -> Protection:
        """ardfs: `protection` as a typed value."""
        return Protection.parse(self.protection)

    @property
    def width(self) -> int:
        """ardfs: how many disks the copies or shards of each block take."""
        return self.redundancy.width


class Pool(PoolSpec):
    created_at: float


def of_class(wanted: str | None, disk: "ArdfsDisk") -> bool:
    """Whether `disk` is of the class `wanted` (None: any disk, told or not)."""
    return wanted is None or disk.device_class == wanted


_NEEDS: dict[str, tuple[str, ...]] = {
    "dir": (),
    "nfs": ("server", "export"),
    "iscsi": ("portal", "target"),
    "block": ("path", "pattern"),
    "rbd": ("rbd_pool",),
    "ardfs": (),
}


class PlacedDisk(Record):
    """A disk an ardfs volume's blocks are placed over (placement hashes these fields)."""

    id: DiskId
    node: Name
    site: Name = "default"
    weight: float = Field(default=1.0, gt=0, le=1000)


class VolumeOrigin(Record):
    """What a cloned volume was copied from; a linked clone still reads its source's blocks."""

    volume: str = Field(description="the source volume's id")
    snapshot: str | None = Field(default=None, description="the source's snapshot, if any")
    linked: bool = Field(
        default=False,
        description="shares the source's blocks copy-on-write: the source cannot be deleted",
    )


class VolumeLayer(Record):
    """ardfs: one layer of a volume's data (snapshots in heron-io): a sparse set of 4 MiB
    blocks stored, placed and protected like a volume under `id`. A block is read from the
    newest layer of the stack (top, its parent, ...) that holds it."""

    id: str = Field(pattern=r"^[0-9a-f]{32}$", description="its blocks' name in heron-io")
    parent: str | None = Field(default=None, description="the layer below; None: the bottom")
    snapshot: str | None = Field(
        default=None, description="the snapshot (its id) whose data ends with this layer"
    )
    volume: str | None = Field(
        default=None,
        description="the volume this layer belongs to, when another (a linked clone reads its "
        "source's frozen layers, never writes them)",
    )
    merging: bool = Field(
        default=False,
        description="its snapshot is deleted: its blocks are being copied into the layers "
        "above (those lacking them), then it goes",
    )
    bytes: int | None = Field(
        default=None,
        ge=0,
        description="what its own 4 MiB blocks hold, counted once whatever the pool's copies "
        "(as the owner's heron-io last reported it); None: not reported yet",
    )
    created_at: float = 0.0


class StateOf(Record):
    """The snapshot a memory-state volume belongs to."""

    vm: str = Field(description="id of the VM")
    snapshot: str = Field(description="id of the snapshot")


class Volume(Record):
    id: str
    pool: Name
    name: Name
    format: VolumeFormat
    size: int = Field(ge=0, description="virtual size in bytes")
    node: Name | None = Field(default=None, description="the node holding it; None if shared")
    location: str = Field(
        default="",
        description="where a LUN-backed pool has it (LUN number, device path); else empty",
    )
    owner: Name | None = Field(
        default=None, description="ardfs: the node whose heron-io writes it (its VM's node)"
    )
    epoch: int = Field(
        default=0, ge=0, description="ardfs: grows with each new owner; older owners are fenced"
    )
    standby: Name | None = Field(
        default=None, description="ardfs: the node a live migration is moving it to"
    )
    placement: list[PlacedDisk] | None = Field(
        default=None, description="ardfs: the disks its blocks are placed over"
    )
    moving_to: list[PlacedDisk] | None = Field(
        default=None,
        description="ardfs: the disks it is being moved onto (a rebalance); they become "
        "its placement once every block has its copies there",
    )
    origin: VolumeOrigin | None = Field(default=None, description="for a clone: its source")
    layers: list[VolumeLayer] = Field(
        default_factory=list,
        description="ardfs: the layers its data and snapshots are made of; empty: one layer, "
        "named by the volume's id",
    )
    top: str | None = Field(default=None, description="ardfs: the layer written (of `layers`)")
    device_class: DeviceClass | None = Field(
        default=None,
        description="ardfs: the class of disk it is placed on, moved and rebuilt onto; None: "
        "its pool's (any disk, if the pool asks for none)",
    )
    state_of: StateOf | None = Field(
        default=None,
        description="a memory-state volume: the snapshot whose memory it holds. It is no "
        "disk (never attached, cloned or moved with a VM) and goes with its snapshot",
    )
    state: Literal["creating", "ready", "error"] = "creating"
    error: str = ""
    created_at: float


ClassSource = Literal["detected", "assumed", "set"]


class ArdfsDisk(Record):
    id: DiskId = Field(description="unique in the cluster")
    path: str = Field(pattern=r"^/", description="a directory on the node for its chunks")
    weight: float = Field(default=1.0, gt=0, le=1000)
    device_class: DeviceClass | None = Field(
        default=None,
        description="nvme, ssd or hdd; None: not told yet (its node's agent detects it from "
        "the kernel as soon as it sees the disk)",
    )
    class_source: ClassSource | None = Field(
        default=None,
        description="detected: from the kernel (the block device under its directory); "
        "assumed: the kernel could not tell (ssd is assumed: see class_note); set: by an "
        "administrator",
    )
    class_note: str = Field(
        default="", max_length=300, description="how the class was told, or why it could not be"
    )


class ArdfsMember(Record):
    """A node's part in an ardfs pool: where its heron-io listens and the disks it gives.

    Every node that runs VMs on the pool is a member (with no disks, it only serves NBD).
    """

    pool: Name
    node: Name
    site: Name = "default"
    address: str | None = Field(default=None, description="host:port of its heron-io peers")
    disks: list[ArdfsDisk] = Field(default_factory=list, max_length=64)


class VolumeHealth(Record):
    """An ardfs volume's redundancy as its owner's heron-io sees it, written when it changes."""

    state: Literal["healthy", "degraded"]
    stale_chunks: int = Field(ge=0, description="chunks with a copy or shard still to rebuild")
    rebuilt_chunks: int = Field(ge=0, description="rebuilt since heron-io started")
    rebuild_bytes_per_s: int = Field(default=0, ge=0)
    move_left: int = Field(
        default=0, ge=0, description="copies still to make on the disks it is moving onto"
    )
    node: Name = Field(description="the owner that reported it")
    epoch: int = Field(default=0, ge=0, description="the owner's epoch when it reported")
    updated_at: float


class DiskUsage(Record):
    total_bytes: int = Field(ge=0)
    free_bytes: int = Field(ge=0)
    error: str = Field(
        default="", description="why heron-io does not serve the disk (empty: it does)"
    )


class ArdfsNodeStatus(Record):
    """A member's disks as its heron-io measured them; rewritten when they change noticeably."""

    disks: dict[str, DiskUsage] = Field(default_factory=dict)
    updated_at: float


class ArdfsTombstone(Record):
    """A deleted ardfs volume: every member removes its chunks, then the mark ages out."""

    pool: Name
    volume: str
    deleted_at: float


# -- what users ask for ------------------------------------------------------------------


class VolumeCreate(BaseModel):
    model_config = {"extra": "forbid"}
    name: Name
    size: int = Field(gt=0, le=64 * 2**40, description="bytes")
    format: VolumeFormat | None = Field(
        default=None, description="qcow2 by default; raw in rbd and ardfs pools"
    )
    node: Name | None = Field(default=None, description="for a local pool; default this node")
    device_class: DeviceClass | None = Field(
        default=None,
        description="ardfs: place it only on disks of this class (nvme, ssd, hdd) in a pool "
        "that asks for none; default: the pool's",
    )


class VolumeImport(BaseModel):
    model_config = {"extra": "forbid"}
    name: Name
    path: str = Field(pattern=r"^/", description="image file on the node")
    format: VolumeFormat | None = Field(
        default=None, description="qcow2 by default; raw in rbd and ardfs pools"
    )
    node: Name | None = Field(default=None, description="node holding the file; default this")


class VolumeResize(BaseModel):
    model_config = {"extra": "forbid"}
    size: int = Field(gt=0, le=64 * 2**40, description="new size in bytes; only growing")


class PoolCapacity(BaseModel):
    total_bytes: int = Field(description="what volumes can hold, after replication or parity")
    free_bytes: int
    raw_total_bytes: int = Field(description="the disks' space")
    raw_free_bytes: int
