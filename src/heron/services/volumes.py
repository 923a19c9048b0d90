"""Volumes: make one (empty, or from an image file on a node), grow one, delete one, and
find the LUNs of an array's pool. Each writes the change with the task that carries it out."""

import time

from heron.configdb import ConfigDB, Txn, keys
from heron.configdb.store import Conflict as StoreConflict
from heron.models.common import new_id
from heron.models.storage import DeviceClass, Volume, VolumeFormat
from heron.models.task import (
    NoParams,
    Task,
    TaskKind,
    VolumeImportParams,
    VolumeResizeParams,
    new_task,
)
from heron.models.vm import VM
from heron.services.clones import refuse_if_read
from heron.services.errors import Conflict, Invalid
from heron.services.lookup import (
    attached,
    find_pool,
    find_volume,
    live_nodes,
    memory_state_of,
    new_placement,
    new_volume_format,
)
from heron.services.tasks import with_task
from heron.storage.registry import capabilities


async def create(
    db: ConfigDB,
    here: str,
    pool_name: str,
    name: str,
    fmt: VolumeFormat | None,
    size: int,
    node: str | None,
    user: str,
    source: VolumeImportParams | None = None,
    device_class: DeviceClass | None = None,
) -> Task:
    """A new volume in a pool, empty (`size` bytes) or imported from `source`'s file, made by
    `node` (default: `here`, the node asked); in an ardfs pool, placed on disks of
    `device_class` (default: the pool's)."""
    pool = (await find_pool(db, pool_name)).value
    fmt = new_volume_format(pool, fmt, "path.name", "body.format")
    target = node or here
    if node is not None and node not in await live_nodes(db):
        raise Invalid("body.node", f"no live node {node!r}")
    volume = Volume(
        id=new_id(),
        pool=pool.name,
        name=name,
        format=fmt,
        size=size,
        node=None if capabilities(pool).shared else target,
        placement=await new_placement(db, pool, "path.name", device_class),
        device_class=device_class,
        created_at=time.time(),
    )
    if source is None:
        task = new_task(TaskKind.volume_create, target, volume.id, user, NoParams())
    else:
        task = new_task(TaskKind.volume_import, target, volume.id, user, source)
    txn = (
        Txn()
        .require_absent(keys.volume_name(pool.name, name))
        .put(keys.volume_name(pool.name, name), volume.id)
        .put(keys.volume(volume.id), volume)
    )
    try:
        await db.commit(with_task(txn, task))
    except StoreConflict as exc:
        raise Conflict(f"pool {pool.name} already has a volume {name}") from exc
    return task


async def resize(db: ConfigDB, here: str, pool_name: str, ref: str, size: int, user: str) -> Task:
    """Grow a volume; one in use is grown by the node running its VM, online."""
    entry = await find_volume(db, pool_name, ref)
    volume = entry.value
    pool = (await find_pool(db, pool_name)).value
    if capabilities(pool).scanned:
        raise Conflict(f"grow the LUN on the array, then scan pool {pool_name}")
    if why := memory_state_of(volume):
        raise Conflict(why)
    if size < volume.size:
        raise Invalid("body.size", f"volumes only grow; it is {volume.size} bytes")
    vms = [e.value for e in await db.list(VM, keys.VMS)]
    owner = next((vm for vm in vms if any(d.volume == volume.id for d in vm.spec.disks)), None)
    node = owner.node if owner is not None else (volume.node or here)
    params = VolumeResizeParams(size=size, vm=owner.id if owner else None)
    task = new_task(TaskKind.volume_resize, node, volume.id, user, params)
    await db.commit(with_task(Txn().require_revision(entry.key, entry.revision), task))
    return task


async def delete(db: ConfigDB, here: str, pool_name: str, ref: str, user: str) -> Task:
    """Delete a volume no VM uses."""
    entry = await find_volume(db, pool_name, ref)
    users = attached([e.value for e in await db.list(VM, keys.VMS)])
    if entry.value.id in users:
        raise Conflict(f"volume {entry.value.name} is used by VM {users[entry.value.id]}")
    state_of = entry.value.state_of
    if state_of is not None and await db.get_raw(keys.snapshot(state_of.vm, state_of.snapshot)):
        raise Conflict(f"{memory_state_of(entry.value)}: delete the snapshot instead")
    await refuse_if_read(db, f"volume {entry.value.name} stays", [entry.value.id])
    if await db.get_raw(keys.iscsi_export(entry.value.id)) is not None:
        raise Conflict(f"volume {entry.value.name} is exported over iSCSI: unexport it first")
    node = entry.value.node or here
    task = new_task(TaskKind.volume_delete, node, entry.value.id, user)
    await db.commit(with_task(Txn().require_revision(entry.key, entry.revision), task))
    return task


async def scan(db: ConfigDB, here: str, pool_name: str, user: str) -> Task:
    """Find the LUNs of an array's pool (new ones become volumes), carried out by `here`."""
    pool = (await find_pool(db, pool_name)).value
    if not capabilities(pool).scanned:
        raise Conflict(f"pool {pool_name} ({pool.type}) makes its volumes; nothing to scan")
    task = new_task(TaskKind.pool_scan, here, pool_name, user)
    await db.commit(with_task(Txn(), task))
    return task
