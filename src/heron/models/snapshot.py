"""Snapshots of a VM: a tree of records, one per point the VM can go back to.

A snapshot's tag in the images and pools (the qcow2 internal snapshot's name, a pool's own
snapshot name) is its id, never its name: names are renamed and may hold what an image format
refuses. Each VM has a "current" snapshot, the tree's "you are here": the parent of the next
snapshot, moved by a revert.
"""

import re
import secrets
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field

from heron.models.common import Name, Record, matching, string_schema

SNAPSHOT_ID_PATTERN = r"^s[0-9a-f]{12}$"
_SNAPSHOT_ID = re.compile(SNAPSHOT_ID_PATTERN)
SnapshotId = Annotated[
    str,
    AfterValidator(matching(SNAPSHOT_ID_PATTERN, "is not a snapshot id (s + 12 hex digits)")),
    string_schema(SNAPSHOT_ID_PATTERN),
]

DEFAULT_FREEZE_LIMIT_S = 10.0
# Longer than this and applications in the guest start timing out on their own writes.
MAX_FREEZE_LIMIT_S = 60.0

Quiesce = Literal["auto", "required", "off"]
Consistency = Literal["crash", "application"]
DiskMethod = Literal["qcow2", "native"]


def new_snapshot_id() -> str:
    return "s" + secrets.token_hex(6)


def is_snapshot_id(value: str) -> bool:
    return bool(_SNAPSHOT_ID.fullmatch(value))


class SnapshotState(StrEnum):
    creating = "creating"
    ready = "ready"
    deleting = "deleting"
    error = "error"


class SnapshotDisk(Record):
    """What a snapshot holds of one disk."""

    index: int = Field(ge=0, description="the disk's place in the VM: 0 for disk0")
    volume: str = Field(description="id of the volume")
    pool: Name
    method: DiskMethod = Field(
        description="qcow2: inside the image (QMP, qemu-img); native: by the pool's driver"
    )
    vm_state: bool = Field(default=False, description="its image holds the memory state")
    size: int | None = Field(
        default=None,
        description="bytes only this snapshot holds, when the pool can tell. ardfs: what the "
        "snapshot's own layer holds, its 4 MiB blocks (those written between the snapshot "
        "before it and this one, plus any merged into it when an older snapshot was deleted), "
        "counted once whatever the pool's copies (rf2 stores twice as much); known a few "
        "seconds after the snapshot, once its volume has an owner. Deleting the snapshot "
        "frees at most this: its blocks written again since are freed, the others move up "
        "into the newer layer",
    )


class Snapshot(Record):
    id: SnapshotId
    vm: str = Field(description="id of the VM")
    name: Name
    description: str = Field(default="", max_length=1024)
    parent: SnapshotId | None = Field(default=None, description="the snapshot it follows")
    created_at: float
    memory: bool = Field(default=False, description="holds the running guest's memory too")
    consistency: Consistency = "crash"
    consistency_reason: str = Field(default="", description="why it is that consistent")
    freeze_ms: int | None = Field(
        default=None, description="how long the guest's filesystems were frozen, when they were"
    )
    disks: list[SnapshotDisk] = Field(default_factory=list)
    vm_state_size: int | None = Field(default=None, description="bytes of memory state")
    state_pool: Name | None = Field(
        default=None,
        description="a memory snapshot of a VM without a qcow2 disk: the pool of the volume "
        "Heron made to hold its memory state",
    )
    state_volume: str | None = Field(
        default=None, description="id of that memory-state volume (not a disk of the VM)"
    )
    state: SnapshotState = SnapshotState.creating
    error: str = ""


class SnapshotHead(Record):
    """The VM's current snapshot: the parent of its next one."""

    snapshot: SnapshotId | None = None


# -- what users ask for ------------------------------------------------------------------


class SnapshotCreate(BaseModel):
    model_config = {"extra": "forbid"}
    name: Name = Field(description="unique among the VM's snapshots")
    description: str = Field(default="", max_length=1024)
    memory: bool = Field(
        default=False,
        description="save the running guest's memory too: a revert brings it back running "
        "at this instant (the guest is paused while its memory is written into its first "
        "qcow2 disk, or else into a volume made for it: see state_pool)",
    )
    quiesce: Quiesce = Field(
        default="auto",
        description="freeze the guest's filesystems through its agent: auto (if it answers), "
        "required (fail without it), off",
    )
    freeze_limit_s: float = Field(
        default=DEFAULT_FREEZE_LIMIT_S,
        ge=1,
        le=MAX_FREEZE_LIMIT_S,
        description="the longest the guest stays frozen; longer fails the snapshot",
    )


class SnapshotUpdate(BaseModel):
    model_config = {"extra": "forbid"}
    name: Name | None = None
    description: str | None = Field(default=None, max_length=1024)
    revision: int | None = Field(default=None, description="write only if still at this revision")


# -- the tree (pure) -----------------------------------------------------------------------


def reparented(snapshots: list[Snapshot], deleted: str) -> list[Snapshot]:
    """The children of `deleted`, each given its parent: what changes when it goes."""
    gone = next((s for s in snapshots if s.id == deleted), None)
    parent = gone.parent if gone is not None else None
    return [s.model_copy(update={"parent": parent}) for s in snapshots if s.parent == deleted]


def head_after_delete(head: str | None, snapshots: list[Snapshot], deleted: str) -> str | None:
    """The VM's current snapshot once `deleted` is gone: its parent if it was current."""
    if head != deleted:
        return head
    gone = next((s for s in snapshots if s.id == deleted), None)
    return gone.parent if gone is not None else None


def tree_order(snapshots: list[Snapshot]) -> list[tuple[int, Snapshot]]:
    """(depth, snapshot) in depth-first order, children by age: a tree to print. A
    snapshot whose parent is missing is a root."""
    ids = {s.id for s in snapshots}
    children: dict[str | None, list[Snapshot]] = {}
    for s in sorted(snapshots, key=lambda s: (s.created_at, s.id)):
        children.setdefault(s.parent if s.parent in ids else None, []).append(s)
    order: list[tuple[int, Snapshot]] = []
    stack = [(0, s) for s in reversed(children.get(None, []))]
    while stack:
        depth, s = stack.pop()
        order.append((depth, s))
        stack.extend((depth + 1, c) for c in reversed(children.get(s.id, [])))
    return order


def lost_in_migration(snapshots: list[Snapshot], left_volumes: set[str]) -> list[str]:
    """Names of the snapshots a live migration would lose: those of volumes it copies (a
    mirror copies only the current data), and those whose memory-state volume it leaves
    behind on a node-local pool (`left_volumes` holds both kinds)."""
    return sorted(
        s.name
        for s in snapshots
        if s.state_volume in left_volumes or any(d.volume in left_volumes for d in s.disks)
    )
