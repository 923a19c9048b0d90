"""A live migration in flight: the record both nodes use to hand a VM over."""

from collections.abc import Iterable, Mapping
from enum import StrEnum

from pydantic import BaseModel, Field

from heron.models.common import Name, Record
from heron.models.snapshot import Snapshot, lost_in_migration
from heron.models.storage import Volume
from heron.models.vm import VM, VMSpec

# How long the guest may be paused at the end of a move, unless asked otherwise.
DEFAULT_MAX_DOWNTIME_MS = 300


class MigrationState(StrEnum):
    preparing = "preparing"  # the target is starting its incoming QEMU
    ready = "ready"  # the target listens on `uri`
    running = "running"  # disks (if local) then memory are being copied
    completed = "completed"  # the VM runs on the target; the record names it
    failed = "failed"


class MigrationOptions(BaseModel):
    """How a live migration may go: asked for by the API, DRS and drain alike."""

    max_downtime_ms: int = Field(
        default=DEFAULT_MAX_DOWNTIME_MS,
        ge=1,
        le=60_000,
        description="longest pause of the guest QEMU may take",
    )
    auto_converge: bool = Field(
        default=True, description="slow the guest's vCPUs down if it dirties memory too fast"
    )
    max_bandwidth_mib: int = Field(
        default=1024, ge=1, le=100_000, description="cap on the copy, MiB/s (QEMU's own: 128)"
    )


class MigrateRequest(MigrationOptions):
    model_config = {"extra": "forbid"}
    target: Name | None = Field(default=None, description="node to move to; chosen if omitted")


class Migration(MigrationOptions, Record):
    vm: str
    source: Name
    target: Name
    state: MigrationState = MigrationState.preparing
    uri: str | None = None
    mirror: list[int] = Field(
        default_factory=list, description="disks on the source's local storage, copied too"
    )
    nbd: str | None = Field(default=None, description="host:port of the target's NBD server")
    ram_kib: int | None = Field(
        default=None,
        description="the source QEMU's RAM in KiB, which the target must match "
        "(not written by releases before it: then exactly the VM's memory)",
    )
    spec: VMSpec | None = Field(
        default=None,
        description="the hardware the guest runs with, which the target starts (edits made "
        "since its start wait for a restart); not written by older releases",
    )
    error: str = ""
    downtime_ms: int | None = None
    created_at: float


def pinned(
    vm: VM, volumes: Mapping[str, Volume], shared_pools: set[str], snapshots: Iterable[Snapshot]
) -> str | None:
    """Why a live migration may not move `vm`, if something keeps it on its node. Its disks on
    node-local pools are mirrored, and a mirror copies only their current data: their
    snapshots would be lost, as would those whose memory state stays behind on such a pool;
    and a linked clone would be copied whole while its record still says it reads its source
    (which stays on this node). `volumes` holds the disks' and the memory states' records."""
    snapshots = list(snapshots)
    local = {
        d.volume
        for d in vm.spec.disks
        if (v := volumes.get(d.volume)) is None or v.pool not in shared_pools
    }
    states = {s.state_volume for s in snapshots if s.state_volume is not None}
    left = local | {
        s for s in states if (v := volumes.get(s)) is not None and v.pool not in shared_pools
    }
    if lost := lost_in_migration(snapshots, left):
        return (
            f"VM {vm.spec.name} has snapshots ({', '.join(lost)}) of disks or memory on "
            "node-local pools: a live migration copies only the disks' current data and "
            "would lose them; delete the snapshots first, or stop the VM and move it"
        )
    for disk in vm.spec.disks:
        v = volumes.get(disk.volume)
        if disk.volume in local and v is not None and v.origin is not None and v.origin.linked:
            return (
                f"VM {vm.spec.name}: its disk {v.name} is a linked clone on the node-local "
                f"pool {v.pool}, which stays on node {vm.node} with its source; stop the VM, "
                "or make it a full clone"
            )
    return None
