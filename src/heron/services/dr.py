"""Disaster recovery inside one cluster (issue 19): protect and unprotect VMs, the inventory
of their protection and points, and restoring a point as a new VM.

The rounds themselves run on the node of each protected VM (agent/dr.py); what they achieved
is its DRStatus record, read here. Every change is refused with the field and the reason
when it cannot be done, and changes nothing then.
"""

import time
from dataclasses import dataclass

from heron.configdb import ConfigDB, keys
from heron.configdb.store import Conflict as StoreConflict
from heron.dr import policy
from heron.models.common import new_id
from heron.models.dr import (
    DRPoint,
    DRStatus,
    Protection,
    ProtectionPolicy,
    ProtectRequest,
    RestoreRequest,
)
from heron.models.settings import ClusterSettings
from heron.models.storage import Pool, Volume, VolumeFormat
from heron.models.task import DRRestoreParams, NewVolume, Task, TaskKind
from heron.models.vm import VM, DiskBus, DiskSpec, Hardware
from heron.scheduler.inventory import Inventory
from heron.services.errors import Conflict, Invalid, NotFound
from heron.services.lookup import find_pool, find_vm, new_placement
from heron.services.plan import Plan, asked_node, place, refuse_taken_name
from heron.storage.registry import capabilities


async def unsupported(db: ConfigDB, vm: VM) -> tuple[str, str] | None:
    """(field, reason) when a disk of the VM cannot be replicated from QEMU's dirty bitmaps
    (ReplicationUnsupported: only qcow2 images hold persistent bitmaps), else None."""
    if not vm.spec.disks:
        return "disks", "the VM has no disks to replicate"
    for index, disk in enumerate(vm.spec.disks):
        volume = await db.get(Volume, keys.volume(disk.volume))
        if volume is None:
            return f"disks.{index}", f"its volume {disk.volume} does not exist"
        v = volume.value
        if v.format != VolumeFormat.qcow2:
            return f"disks.{index}", (
                f"ReplicationUnsupported: volume {v.pool}/{v.name} is {v.format.value}: only "
                "qcow2 images keep the dirty bitmaps replication needs (ARDFS volumes need "
                "change tracking in heron-io, not done yet)"
            )
    return None


async def protect(db: ConfigDB, ref: str, body: ProtectRequest, user: str) -> Protection:
    """Protect a VM with a policy, or change its policy."""
    vm = (await find_vm(db, ref)).value
    found = await db.get(ClusterSettings, keys.SETTINGS)
    least = (found.value if found else ClusterSettings()).dr.min_interval_seconds
    if body.interval_seconds < least:
        raise Invalid(
            "body.interval_seconds",
            f"{body.interval_seconds} s is shorter than the cluster's least, {least} s "
            "(setting dr.min_interval_seconds)",
        )
    refused = await unsupported(db, vm)
    if refused is not None:
        field, reason = refused
        raise Conflict(
            f"VM {vm.spec.name} cannot be protected: {reason}",
            [{"field": field, "reason": reason}],
        )
    old = await db.get(Protection, keys.dr_protection(vm.id))
    protection = Protection(
        vm=vm.id,
        policy=ProtectionPolicy.model_validate(body.model_dump()),
        since=old.value.since if old else time.time(),
        user=user,
    )
    await db.put(keys.dr_protection(vm.id), protection)
    return protection


async def unprotect(db: ConfigDB, ref: str) -> VM:
    """No more rounds (one running ends); the points stay listed, to be restored."""
    vm = (await find_vm(db, ref)).value
    if await db.get(Protection, keys.dr_protection(vm.id)) is None:
        raise NotFound(f"VM {vm.spec.name} is not protected")
    await db.delete(keys.dr_protection(vm.id))
    return vm


async def inventory(db: ConfigDB, now: float | None = None) -> list[policy.InventoryRow]:
    """Every VM with its protection; then VMs gone whose points are still listed."""
    now = time.time() if now is None else now
    vms = [e.value for e in await db.list(VM, keys.VMS)]
    protections = {e.value.vm: e.value for e in await db.list(Protection, keys.DR_PROTECTIONS)}
    statuses = {e.value.vm: e.value for e in await db.list(DRStatus, keys.DR_STATUS)}
    rows = [
        policy.inventory_row(
            vm.id, vm.spec.name, vm.node, protections.get(vm.id), statuses.get(vm.id), now
        )
        for vm in sorted(vms, key=lambda v: v.spec.name)
        if not vm.template
    ]
    present = {vm.id for vm in vms}
    rows += [
        policy.inventory_row(s.vm, s.name, None, None, s, now)
        for s in sorted(statuses.values(), key=lambda s: s.name)
        if s.vm not in present and s.points
    ]
    return rows


@dataclass
class Points:
    vm: str
    name: str
    node: str | None  # whose store holds them
    points: list[DRPoint]


async def status_of(db: ConfigDB, ref: str) -> tuple[str, DRStatus | None, str]:
    """(VM id, its DR status, its name) by the VM's id or name, or the id of a VM gone."""
    try:
        vm = (await find_vm(db, ref)).value
        vm_id, name = vm.id, vm.spec.name
    except NotFound:
        gone = await db.get(DRStatus, keys.dr_status(ref))
        if gone is None:
            raise
        return ref, gone.value, gone.value.name
    found = await db.get(DRStatus, keys.dr_status(vm_id))
    return vm_id, found.value if found else None, name


async def points(db: ConfigDB, ref: str) -> Points:
    vm_id, status, name = await status_of(db, ref)
    return Points(vm_id, name, status.node if status else None, status.points if status else [])


async def restore(
    db: ConfigDB, inventory_: Inventory, ref: str, point_id: str, body: RestoreRequest, user: str
) -> Plan:
    """A new VM from a point: its hardware as at the point's last round, its disks restored
    into `body.pool` by a `dr.restore` task on the node whose store holds the point (the new
    VM is placed there, stopped)."""
    ready = await inventory_.ready()
    vm_id, status, name = await status_of(db, ref)
    point = next((p for p in status.points if p.id == point_id), None) if status else None
    if status is None or point is None:
        raise NotFound(f"VM {name} has no point {point_id!r}")
    nodes = ready.live_nodes()
    if status.node not in nodes:
        raise Conflict(f"node {status.node}, whose store holds the point, is not online")
    vms = list(ready.vms.values())
    await refuse_taken_name(db, body.name, vms)
    pool: Pool = (await find_pool(db, body.pool, "body.pool")).value
    can = capabilities(pool)
    if can.scanned:
        raise Invalid("body.pool", f"pool {pool.name} ({pool.type}) holds an array's LUNs")
    fmt = VolumeFormat.qcow2 if VolumeFormat.qcow2 in can.formats else can.formats[0]
    now = time.time()
    new_vm = new_id()
    disks: list[DiskSpec] = []
    volumes: list[Volume] = []
    for index, disk in enumerate(sorted(point.disks, key=_disk_index)):
        volume = Volume(
            id=new_id(),
            pool=pool.name,
            name=f"{body.name}-disk{index}",
            format=fmt,
            size=point.disks[disk],
            node=None,
            placement=await new_placement(db, pool, "body.pool"),
            created_at=now,
        )
        if await db.get_raw(keys.volume_name(pool.name, volume.name)) is not None:
            raise Conflict(f"pool {pool.name} already has a volume {volume.name}")
        bus: DiskBus = status.buses[index] if index < len(status.buses) else "virtio"  # type: ignore[assignment]
        disks.append(DiskSpec(bus=bus, volume=volume.id))
        volumes.append(volume)
    hardware = Hardware.model_validate(status.hardware or {}).model_dump()
    hardware["name"] = body.name
    # Its disks only: the new VM has no NICs (a DR plan's network mapping will give them).
    hardware["boot_order"] = [
        b
        for b in hardware.get("boot_order", [])
        if b.startswith("disk") and int(b[4:]) < len(disks)
    ]
    params = DRRestoreParams(
        vm=vm_id, point=point.id, volumes=[NewVolume(id=v.id) for v in volumes]
    )
    plan = await place(
        db,
        new_vm,
        hardware,
        disks,
        [],
        volumes,
        nodes=nodes,
        vms=vms,
        pinned=asked_node(nodes, status.node),
        rule=None,
        start=False,
        now=now,
        task=(TaskKind.dr_restore, params, user),
    )
    try:
        revision = await db.commit(plan.txn)
    except StoreConflict as exc:
        raise Conflict(f"the name {body.name!r} or a volume name was taken; try again") from exc
    await inventory_.vms.wait_for(revision)
    return plan


def _disk_index(name: str) -> int:
    return int(name[4:]) if name.startswith("disk") and name[4:].isdigit() else 1 << 30


async def tasks_of(db: ConfigDB, vm_id: str) -> list[Task]:
    """The VM's DR rounds that are queued or running."""
    return [
        e.value
        for e in await db.list(Task, keys.TASKS)
        if e.value.target == vm_id
        and e.value.kind == TaskKind.dr_replicate
        and not e.value.state.finished
    ]
