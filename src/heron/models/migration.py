"""A live migration in flight: the record both nodes use to hand a VM over."""

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
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
    receive_task: str | None = Field(
        default=None,
        description="the target's vm.receive task, the only one that acts on this record "
        "(not written by older releases: then any vm.receive of the target)",
    )


def receives(record: Migration, node: str, task_id: str) -> bool:
    """Whether `record` is the migration that the `vm.receive` task `task_id` on `node` was
    made for. A target that was away may find the record closed without it and the VM's next
    migration written in its place (even to itself): that one is not its own, and it must
    neither act on it nor remove it."""
    return record.target == node and record.receive_task in (None, task_id)


@dataclass(frozen=True)
class Verdict:
    """What may be done with a migration record that is in the way of a new one."""

    close: bool  # someone other than its target may remove it now
    why: str  # the reason (for the audit when closed; for the refusal otherwise)


_ENDED = (MigrationState.failed, MigrationState.completed)


def takeover(
    record: Migration,
    live: Collection[str],
    vm_node: str,
    source_busy: bool,
    target_busy: bool,
) -> Verdict:
    """Whether a migration record that its target has not closed may be closed by someone
    else: `live` are the nodes holding a lease, `vm_node` is where the VM's record puts it,
    `source_busy` whether a `vm.migrate` task of the VM has not finished, `target_busy`
    whether the record's `vm.receive` task has not.

    Only the target closes a record it took part in, because only it knows what it made: an
    incoming QEMU and disk copies. A target that never comes back (or whose task ended
    without closing it) would pin the VM for good, so another may close it when one holds
    (the argument, in full, is in docs/architecture.md, "A target that does not come back"):
    - the move has a verdict (failed or completed), no migrate task is still running and the
      target holds no lease or its receive task has ended: the source's QEMU was told to
      cancel (or finished and handed the VM over) and its ARDFS volumes went back to it at a
      new epoch, so nothing of this move still sends or writes, and the target no longer
      acts on it. A source task that is still running (its agent away) decides itself;
    - the VM was restarted by HA on a third node and the target holds no lease (only HA
      moves a VM without a migration record, and only after its node failed): the VM is HA,
      so its QEMUs on the nodes that lost their lease were fenced, an agent drops what it
      has of a VM placed elsewhere when it starts, and the source's task, resumed, finds the
      VM elsewhere and ends without touching the record.
    A returning target checks that the record is still its own (`receives`) before it
    touches anything, and otherwise drops its incoming QEMU and copies: so a closed record
    never lets two QEMUs run the guest or write its disks. A move without a verdict is
    never closed by guess: QEMU may have finished it, and the guest may run on the target."""
    source, target = record.source, record.target
    moved = f"the migration of the VM from {source} to {target} ({record.state})"
    away = target not in live
    if away and vm_node not in (source, target):
        return Verdict(
            True,
            f"{moved}: HA restarted the VM on {vm_node} after its node failed; closed "
            f"without {target}",
        )
    if not away and target_busy:
        return Verdict(False, f"{moved} is being closed by node {target}; try again shortly")
    if source_busy:
        where = "" if source in live else f" (node {source} is away: when its agent is back)"
        return Verdict(
            False,
            f"{moved}: the migrate task on node {source} has not ended{where}; it ends the "
            "move, or cancel it",
        )
    if record.state in _ENDED:
        gone = (
            f"node {target} left the cluster before closing it"
            if away
            else f"the receive task on node {target} ended without closing it"
        )
        return Verdict(
            True,
            f"{moved}: {gone}; closed without {target}, which drops what it made for the "
            "move if it comes back",
        )
    return Verdict(
        False,
        f"{moved} has no task left to end it: once you made sure no QEMU of the VM runs on "
        f"{target}, delete the record /heron/migrations/{record.vm} in etcd",
    )


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
