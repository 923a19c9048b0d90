"""Snapshots of VMs: list, take, rename, revert and delete them. Each change is written with
the task that carries it out on the VM's node, in one transaction; what cannot be done is
refused with the field and the reason, and changes nothing."""

from dataclasses import dataclass

from heron.configdb import ConfigDB, Entry, Txn, keys
from heron.configdb.store import Conflict as StoreConflict
from heron.models.common import new_id, now
from heron.models.snapshot import (
    Snapshot,
    SnapshotCreate,
    SnapshotDisk,
    SnapshotHead,
    SnapshotState,
    SnapshotUpdate,
    is_snapshot_id,
    new_snapshot_id,
)
from heron.models.storage import Pool, StateOf, Volume, VolumeFormat
from heron.models.task import SnapshotParams, Task, TaskKind, new_task
from heron.models.vm import VM, RunState, VMSpec, VMStatus, reserved_memory_mib
from heron.services import clones
from heron.services.errors import Conflict, Invalid, NotFound
from heron.services.lookup import find_vm, live_nodes, new_placement
from heron.services.tasks import with_task
from heron.storage import vmstate
from heron.storage.registry import capabilities

KINDS = (TaskKind.snapshot_create, TaskKind.snapshot_revert, TaskKind.snapshot_delete)


@dataclass
class Listing:
    vm: VM
    snapshots: list[Entry[Snapshot]]
    current: str | None


async def list_snapshots(db: ConfigDB, ref: str) -> Listing:
    vm = (await find_vm(db, ref)).value
    found = await db.list(Snapshot, keys.snapshots(vm.id))
    head = await db.get(SnapshotHead, keys.snapshot_head(vm.id))
    found.sort(key=lambda e: (e.value.created_at, e.value.id))
    return Listing(vm, found, head.value.snapshot if head else None)


async def find_snapshot(db: ConfigDB, vm: VM, ref: str) -> Entry[Snapshot]:
    """One of the VM's snapshots, by id or name."""
    entry = await db.get(Snapshot, keys.snapshot(vm.id, ref)) if is_snapshot_id(ref) else None
    if entry is None:
        index = await db.get_raw(keys.snapshot_name(vm.id, ref))
        if index is not None:
            entry = await db.get(Snapshot, keys.snapshot(vm.id, index[0].decode()))
    if entry is None:
        raise NotFound(f"VM {vm.spec.name} has no snapshot {ref!r}")
    return entry


# -- checks (each raises what the API answers) --------------------------------------------


async def _status(db: ConfigDB, vm: VM) -> VMStatus | None:
    found = await db.get(VMStatus, keys.vm_status(vm.id))
    return found.value if found is not None else None


def _running(vm: VM, status: VMStatus | None) -> bool:
    return (
        status is not None
        and status.node == vm.node
        and status.state in (RunState.running, RunState.paused)
    )


async def _check_vm_free(db: ConfigDB, vm: VM, status: VMStatus | None) -> None:
    """The VM's node can act on it now, and nothing else is changing its disks."""
    if status is not None and status.state == RunState.pending:
        raise Conflict(f"VM {vm.spec.name} has no node: it waits for HA to place it")
    if vm.node not in await live_nodes(db):
        raise Conflict(f"the VM's node {vm.node} is not online")
    if await db.get_raw(keys.migration(vm.id)) is not None:
        raise Conflict(
            f"VM {vm.spec.name} is migrating (its disks may be moving): wait until it is done"
        )
    for found in await db.list(Task, keys.TASKS):
        task = found.value
        if task.target == vm.id and task.kind in KINDS and not task.state.finished:
            raise Conflict(
                f"VM {vm.spec.name} is busy with another snapshot task ({task.kind}, {task.id})"
            )


async def plan_disks(db: ConfigDB, spec: VMSpec) -> list[SnapshotDisk]:
    """How each disk is snapshotted: inside its qcow2 image, or by its pool. Refuses a disk
    that can be neither, naming it."""
    disks = []
    for index, disk in enumerate(spec.disks):
        field = f"disks.{index}"
        volume = await db.get(Volume, keys.volume(disk.volume))
        if volume is None:
            reason = f"its volume {disk.volume} does not exist"
            raise Conflict(f"disk{index}: {reason}", [{"field": field, "reason": reason}])
        pool = await db.get(Pool, keys.pool(volume.value.pool))
        if pool is None:
            raise Conflict(f"disk{index}: pool {volume.value.pool} does not exist")
        v = volume.value
        if v.state != "ready":
            raise Conflict(f"disk{index}: volume {v.pool}/{v.name} is {v.state}")
        if v.moving_to is not None:
            raise Conflict(
                f"disk{index}: volume {v.pool}/{v.name} is being moved onto other disks: "
                "take the snapshot once the move is done"
            )
        if v.format == VolumeFormat.qcow2:
            method = "qcow2"
        elif capabilities(pool.value).native_snapshots:
            method = "native"
        else:
            reason = (
                f"volume {v.pool}/{v.name} is {v.format.value} on pool {v.pool} "
                f"({pool.value.type}), which takes no snapshots of its own: only qcow2 "
                "volumes keep snapshots there (copy the disk into a qcow2 volume)"
            )
            raise Conflict(f"disk{index}: {reason}", [{"field": field, "reason": reason}])
        disks.append(
            SnapshotDisk(index=index, volume=v.id, pool=v.pool, method=method)  # type: ignore[arg-type]
        )
    return disks


# -- changes -----------------------------------------------------------------------------


async def create(db: ConfigDB, ref: str, body: SnapshotCreate, user: str) -> tuple[Snapshot, Task]:
    entry = await find_vm(db, ref)
    vm = entry.value
    status = await _status(db, vm)
    await _check_vm_free(db, vm, status)
    running = _running(vm, status)
    # A running QEMU has the disks it started with; disks given since wait for its restart.
    spec = status.hardware if running and status and status.hardware else vm.spec
    if not spec.disks:
        raise Conflict(f"VM {vm.spec.name} has no disks to snapshot")
    name_key = keys.snapshot_name(vm.id, body.name)
    if await db.get_raw(name_key) is not None:
        reason = "is taken by another snapshot of this VM"
        raise Conflict(
            f"VM {vm.spec.name} already has a snapshot {body.name!r}",
            [{"field": "body.name", "reason": reason}],
        )
    disks = await plan_disks(db, spec)
    snapshot_id = new_snapshot_id()
    state: Volume | None = None
    if body.memory:
        if not running:
            raise Invalid("body.memory", "the VM is not running: it has no memory to save")
        qcow2 = [d for d in disks if d.method == "qcow2"]
        if qcow2:
            qcow2[0].vm_state = True  # the memory goes inside the first qcow2 image
        else:
            state = await plan_state_volume(db, vm, spec, disks, snapshot_id)
    head = await db.get(SnapshotHead, keys.snapshot_head(vm.id))
    snapshot = Snapshot(
        id=snapshot_id,
        vm=vm.id,
        name=body.name,
        description=body.description,
        parent=head.value.snapshot if head else None,
        created_at=now(),
        memory=body.memory,
        disks=disks,
        state_pool=state.pool if state else None,
        state_volume=state.id if state else None,
    )
    params = SnapshotParams(
        snapshot=snapshot.id, quiesce=body.quiesce, freeze_limit_s=body.freeze_limit_s
    )
    task = new_task(TaskKind.snapshot_create, vm.node, vm.id, user, params)
    txn = Txn().require_revision(entry.key, entry.revision)
    txn.require_absent(name_key).put(name_key, snapshot.id)
    txn.put(keys.snapshot(vm.id, snapshot.id), snapshot)
    if state is not None:  # made by the task; written now, so that nothing loses track of it
        state_name = keys.volume_name(state.pool, state.name)
        txn.require_absent(state_name).put(state_name, state.id).put(keys.volume(state.id), state)
    try:
        await db.commit(with_task(txn, task))
    except StoreConflict as exc:
        raise Conflict(
            f"VM {vm.spec.name} changed meanwhile, or the name {body.name!r} was taken"
        ) from exc
    return snapshot, task


async def plan_state_volume(
    db: ConfigDB, vm: VM, spec: VMSpec, disks: list[SnapshotDisk], snapshot_id: str
) -> Volume:
    """The record of the volume that will hold a memory snapshot's state, for a VM none of
    whose disks is qcow2 (storage/vmstate.py); refuses, naming the pools, when no pool can."""
    pools = [e.value for e in await db.list(Pool, keys.POOLS)]
    by_name = {p.name: p for p in pools}
    disk_pools = [by_name[d.pool] for d in disks if d.pool in by_name]
    served = set()
    for pool in pools:
        member = keys.ardfs_member(pool.name, vm.node)
        if capabilities(pool).member_disks and await db.get_raw(member) is not None:
            served.add(pool.name)
    plan = vmstate.plan_state_pool(disk_pools, pools, vm.node, served)
    if plan.pool is None:
        raise Invalid("body.memory", plan.reason)
    pool = plan.pool
    return Volume(
        id=new_id(),
        pool=pool.name,
        name=vmstate.state_volume_name(vm.spec.name, snapshot_id),
        format=vmstate.state_format(pool),
        size=vmstate.state_size(reserved_memory_mib(spec) * 1024**2),
        node=None if capabilities(pool).shared else vm.node,
        placement=await new_placement(db, pool, "body.memory"),
        state_of=StateOf(vm=vm.id, snapshot=snapshot_id),
        created_at=now(),
    )


async def update(db: ConfigDB, ref: str, snap_ref: str, body: SnapshotUpdate) -> Entry[Snapshot]:
    """Rename a snapshot or change its description (nothing in the images changes: their
    tag is its id)."""
    vm = (await find_vm(db, ref)).value
    entry = await find_snapshot(db, vm, snap_ref)
    if body.revision is not None and body.revision != entry.revision:
        raise Conflict(
            f"snapshot {entry.value.name} changed since revision {body.revision} "
            f"(now {entry.revision}); read it again"
        )
    changes = body.model_dump(exclude_unset=True, exclude={"revision"})
    changes = {k: v for k, v in changes.items() if v is not None}
    snapshot = entry.value.model_copy(update=changes)
    txn = Txn().require_revision(entry.key, entry.revision).put(entry.key, snapshot)
    if snapshot.name != entry.value.name:
        new_key = keys.snapshot_name(vm.id, snapshot.name)
        if await db.get_raw(new_key) is not None:
            raise Conflict(
                f"VM {vm.spec.name} already has a snapshot {snapshot.name!r}",
                [{"field": "body.name", "reason": "is taken by another snapshot of this VM"}],
            )
        txn.require_absent(new_key).put(new_key, snapshot.id)
        txn.delete(keys.snapshot_name(vm.id, entry.value.name))
    try:
        revision = await db.commit(txn)
    except StoreConflict as exc:
        taken = f"snapshot {entry.value.name} changed meanwhile, or the name is taken"
        raise Conflict(taken) from exc
    return Entry(entry.key, snapshot, revision)


async def revert(db: ConfigDB, ref: str, snap_ref: str, user: str) -> Task:
    """Bring the VM back to a snapshot (see docs/operations.md for its power state after)."""
    entry = await find_vm(db, ref)
    vm = entry.value
    snapshot = (await find_snapshot(db, vm, snap_ref)).value
    if snapshot.state != SnapshotState.ready:
        raise Conflict(f"snapshot {snapshot.name} is {snapshot.state.value}: not to revert to")
    status = await _status(db, vm)
    await _check_vm_free(db, vm, status)
    now_disks = {d.volume for d in vm.spec.disks}
    if now_disks != {d.volume for d in snapshot.disks}:
        raise Conflict(
            f"VM {vm.spec.name}'s disks changed since snapshot {snapshot.name} was taken: "
            "give it back the disks it had, or take the snapshot's disks one by one"
        )
    await clones.refuse_if_read(
        db, f"VM {vm.spec.name} is not reverted", [d.volume for d in vm.spec.disks]
    )
    if snapshot.state_volume is not None:
        state = await db.get(Volume, keys.volume(snapshot.state_volume))
        if state is None or state.value.node not in (None, vm.node):
            where = f"is on node {state.value.node}" if state else "is gone"
            raise Conflict(
                f"the memory state of snapshot {snapshot.name} {where}: VM {vm.spec.name} "
                f"on node {vm.node} cannot be reverted to it"
            )
    task = new_task(
        TaskKind.snapshot_revert, vm.node, vm.id, user, SnapshotParams(snapshot=snapshot.id)
    )
    await db.commit(with_task(Txn().require_revision(entry.key, entry.revision), task))
    return task


async def delete(db: ConfigDB, ref: str, snap_ref: str, user: str) -> Task:
    """Delete a snapshot, wherever it is in the tree (its children follow its parent)."""
    entry = await find_vm(db, ref)
    vm = entry.value
    found = await find_snapshot(db, vm, snap_ref)
    snapshot = found.value
    if snapshot.state in (SnapshotState.creating, SnapshotState.deleting):
        raise Conflict(f"snapshot {snapshot.name} is {snapshot.state.value}: wait for it")
    await _check_vm_free(db, vm, await _status(db, vm))
    await clones.refuse_snapshot_if_read(db, snapshot)
    task = new_task(
        TaskKind.snapshot_delete, vm.node, vm.id, user, SnapshotParams(snapshot=snapshot.id)
    )
    marked = snapshot.model_copy(update={"state": SnapshotState.deleting})
    txn = Txn().require_revision(entry.key, entry.revision)
    txn.require_revision(found.key, found.revision).put(found.key, marked)
    try:
        await db.commit(with_task(txn, task))
    except StoreConflict as exc:
        raise Conflict(f"snapshot {snapshot.name} changed meanwhile; try again") from exc
    return task
