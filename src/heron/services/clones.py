"""Clones: a new VM with copies of another VM's disks (a template's, a stopped VM's, or a
snapshot's) and its hardware, with fresh MACs and addresses. A `vm.clone` task on the new
VM's node makes its volumes through the pool drivers (`PoolDriver.clone`).

A linked clone reads its source's blocks (copy-on-write): the source must never change. So a
linked clone is made only of a template's disks (a template never starts) or of a snapshot
that its pool keeps itself, and what it reads is not deleted, reverted or detached while the
clone exists: `linked_clones` names the clones that hold it.
"""

import time
from collections.abc import Iterable

from heron.configdb import ConfigDB, Entry, keys
from heron.configdb.store import Conflict as StoreConflict
from heron.models.common import new_id
from heron.models.node import Node
from heron.models.snapshot import DiskMethod, Snapshot, SnapshotState, is_snapshot_id
from heron.models.storage import Volume, VolumeFormat, VolumeOrigin
from heron.models.task import NewVolume, Task, TaskKind, VMCloneParams
from heron.models.vm import (
    VM,
    CloneRequest,
    DiskBus,
    DiskSpec,
    Hardware,
    PowerState,
    RunState,
    VMStatus,
)
from heron.scheduler.inventory import Inventory, group_of
from heron.scheduler.placement import affinity_for
from heron.services.errors import Conflict, Invalid
from heron.services.lookup import find_pool, find_vm, new_placement
from heron.services.plan import Plan, asked_node, narrowed, place, refuse_taken_name
from heron.storage.registry import capabilities

# -- who reads what ------------------------------------------------------------------------


async def linked_clones(
    db: ConfigDB, volume_ids: Iterable[str], snapshot: str | None = None
) -> list[Volume]:
    """The linked clones that read one of `volume_ids` (only those of `snapshot`, if given)."""
    wanted = set(volume_ids)
    return [
        e.value
        for e in await db.list(Volume, keys.VOLUMES)
        if e.value.origin is not None
        and e.value.origin.linked
        and e.value.origin.volume in wanted
        and (snapshot is None or e.value.origin.snapshot == snapshot)
    ]


def _names(clones: list[Volume]) -> str:
    shown = sorted(f"{v.pool}/{v.name}" for v in clones)
    more = f" and {len(shown) - 5} more" if len(shown) > 5 else ""
    return ", ".join(shown[:5]) + more


async def refuse_if_read(db: ConfigDB, what: str, volume_ids: Iterable[str]) -> None:
    """Conflict when linked clones read one of the volumes; `what` is the object refused."""
    clones = await linked_clones(db, volume_ids)
    if clones:
        raise Conflict(
            f"{what}: linked clones read its disks ({_names(clones)}); delete them first"
        )


async def refuse_snapshot_if_read(db: ConfigDB, snapshot: Snapshot) -> None:
    clones = await linked_clones(db, [d.volume for d in snapshot.disks], snapshot.id)
    if clones:
        raise Conflict(
            f"snapshot {snapshot.name}: linked clones read it ({_names(clones)}); delete them first"
        )
    for found in await db.list(Task, keys.TASKS):
        task = found.value
        if (
            task.kind == TaskKind.vm_clone
            and not task.state.finished
            and task.params.get("snapshot") == snapshot.id
        ):
            raise Conflict(f"snapshot {snapshot.name} is being cloned (task {task.id})")


async def cloning_from(db: ConfigDB, vm_id: str) -> Task | None:
    """An unfinished clone task reading the VM's disks, if one runs."""
    for found in await db.list(Task, keys.TASKS):
        task = found.value
        if (
            task.kind == TaskKind.vm_clone
            and not task.state.finished
            and task.params.get("source") == vm_id
            and task.params.get("snapshot") is None
        ):
            return task
    return None


# -- the plan ------------------------------------------------------------------------------


async def _snapshot(db: ConfigDB, vm: VM, ref: str) -> Snapshot:
    # As services/snapshots finds one (which imports this module for its own checks).
    entry = await db.get(Snapshot, keys.snapshot(vm.id, ref)) if is_snapshot_id(ref) else None
    if entry is None:
        index = await db.get_raw(keys.snapshot_name(vm.id, ref))
        if index is not None:
            entry = await db.get(Snapshot, keys.snapshot(vm.id, index[0].decode()))
    if entry is None:
        raise Invalid("body.snapshot", f"VM {vm.spec.name} has no snapshot {ref!r}")
    snapshot = entry.value
    if snapshot.state != SnapshotState.ready:
        raise Conflict(f"snapshot {snapshot.name} is {snapshot.state.value}: not to clone")
    return snapshot


async def plan_clone(
    db: ConfigDB,
    source: VM,
    body: CloneRequest,
    nodes: dict[str, Node],
    vms: list[VM],
    user: str,
    status: VMStatus | None,
) -> Plan:
    """Check a clone request and place the new VM; the transaction that makes it, unwritten."""
    await refuse_taken_name(db, body.name, vms)
    snapshot = await _snapshot(db, source, body.snapshot) if body.snapshot else None
    if snapshot is None and not source.template:
        running = source.power != PowerState.stopped or (
            status is not None and status.state in (RunState.running, RunState.paused)
        )
        if running:
            raise Conflict(
                f"VM {source.spec.name} is running: its disks change while they are copied; "
                "stop it, or clone one of its snapshots"
            )
    if body.linked and snapshot is None and not source.template:
        raise Invalid(
            "body.linked",
            f"VM {source.spec.name} is not a template: its disks would change under a linked "
            "clone; make it a template, clone one of its snapshots, or make a full clone",
        )
    target_pool = (await find_pool(db, body.pool, "body.pool")).value if body.pool else None
    now = time.time()
    vm_id = new_id()
    pinned = asked_node(nodes, body.node)  # narrowed by node-local sources

    # (bus, volume id, how its snapshot is kept) of each disk to copy, in the new VM's order.
    buses = {d.volume: d.bus for d in source.spec.disks}
    wanted: list[tuple[DiskBus, str, DiskMethod | None]]
    if snapshot is not None:
        wanted = [
            (buses.get(d.volume, "virtio"), d.volume, d.method)
            for d in sorted(snapshot.disks, key=lambda d: d.index)
        ]
    else:
        wanted = [(d.bus, d.volume, None) for d in source.spec.disks]
    disks: list[DiskSpec] = []
    made: list[tuple[Volume, NewVolume]] = []
    for index, (bus, volume_id, method) in enumerate(wanted):
        field = f"disks.{index}"
        entry = await db.get(Volume, keys.volume(volume_id))
        if entry is None:
            raise Conflict(f"disk{index}: its volume {volume_id} does not exist")
        src = entry.value
        if src.state != "ready":
            raise Conflict(f"disk{index}: volume {src.pool}/{src.name} is {src.state}")
        pool = (await find_pool(db, src.pool)).value
        can = capabilities(pool)
        linked = body.linked
        if linked:
            why = None
            if method == "qcow2":
                why = "its snapshot is inside a qcow2 image, which cannot back a linked clone"
            elif not can.linked_clones:
                why = f"pool {pool.name} ({pool.type}) makes no linked clones"
            elif target_pool is not None and target_pool.name != pool.name:
                why = f"a linked clone stays in its source's pool {pool.name}"
            if why is not None:
                if not body.full_if_unlinked:
                    raise Invalid(
                        "body.linked",
                        f"disk{index}: {why}; ask for a full clone (or full_if_unlinked)",
                    )
                linked = False
        into = pool if linked or target_pool is None else target_pool
        into_can = capabilities(into)
        if into_can.scanned:
            raise Invalid("body.pool", f"pool {into.name} ({into.type}) holds an array's LUNs")
        if snapshot is not None and into.name != pool.name:
            raise Invalid(
                "body.pool",
                f"disk{index}: a snapshot is cloned within its pool {pool.name}",
            )
        if linked and not can.native_snapshots:
            fmt = VolumeFormat.qcow2  # an overlay over the source
        elif src.format in into_can.formats:
            fmt = src.format
        else:
            fmt = into_can.formats[0]
        # The task reads the source where it is: a clone of a node-local volume is made there.
        pinned = narrowed(pinned, src.node, "body.node" if body.node else field)
        volume = Volume(
            id=new_id(),
            pool=into.name,
            name=f"{body.name}-disk{index}",
            format=fmt,
            size=src.size,
            node=None,
            placement=await new_placement(db, into, "body.pool"),
            origin=VolumeOrigin(
                volume=src.id, snapshot=snapshot.id if snapshot else None, linked=linked
            ),
            created_at=now,
        )
        if await db.get_raw(keys.volume_name(into.name, volume.name)) is not None:
            raise Conflict(f"pool {into.name} already has a volume {volume.name}")
        same_pool = into.name == pool.name
        made.append((volume, NewVolume(id=volume.id, source=src.id, clone=same_pool)))
        disks.append(DiskSpec(bus=bus, volume=volume.id))
    fresh = [
        n.model_copy(update={"mac": None, "address": None, "slot": None}) for n in source.spec.nics
    ]
    hardware = source.spec.model_dump(include=set(Hardware.model_fields))
    hardware["name"] = body.name
    hardware["boot_order"] = [
        b for b in source.spec.boot_order if not b.startswith("disk") or int(b[4:]) < len(disks)
    ]
    if body.description is not None:
        hardware["description"] = body.description
    if body.cloud_init is not None:
        hardware["cloud_init"] = body.cloud_init.model_dump()
    params = VMCloneParams(
        volumes=[n for _, n in made],
        source=source.id,
        snapshot=snapshot.id if snapshot else None,
    )
    return await place(
        db,
        vm_id,
        hardware,
        disks,
        fresh,
        [v for v, _ in made],
        nodes=nodes,
        vms=vms,
        pinned=pinned,
        rule=affinity_for(vm_id, await group_of(db, source), vms),
        start=body.start,
        now=now,
        task=(TaskKind.vm_clone, params, user),
    )


async def source_of(db: ConfigDB, ref: str) -> tuple[Entry[VM], VMStatus | None]:
    entry = await find_vm(db, ref)
    status = await db.get(VMStatus, keys.vm_status(entry.value.id))
    return entry, status.value if status else None


async def clone(
    db: ConfigDB, inventory: Inventory, ref: str, body: CloneRequest, user: str
) -> Plan:
    """Clone a VM, a template or a snapshot into a new VM (a `vm.clone` task makes it)."""
    inventory = await inventory.ready()
    entry, status = await source_of(db, ref)
    plan = await plan_clone(
        db, entry.value, body, inventory.live_nodes(), inventory.vms.values(), user, status
    )
    # The source is checked at this revision: started or changed meanwhile, no clone.
    plan.txn.require_revision(entry.key, entry.revision)
    try:
        revision = await db.commit(plan.txn)
    except StoreConflict as exc:
        raise Conflict(
            f"VM {entry.value.spec.name} changed meanwhile, or the name {body.name!r} "
            "or a volume name was taken; try again"
        ) from exc
    await inventory.vms.wait_for(revision)
    return plan
