"""Pools: define one, delete an empty one, and give or take the disks of a pool whose
driver keeps its data on its members' disks (ardfs)."""

import time
from pathlib import Path

from heron.configdb import ConfigDB, Txn, cas, keys
from heron.configdb.store import Conflict as StoreConflict
from heron.models.common import new_id
from heron.models.storage import (
    ArdfsDisk,
    ArdfsMember,
    ArdfsNodeStatus,
    DeviceClass,
    Pool,
    PoolCapacity,
    PoolSpec,
    Volume,
    of_class,
)
from heron.services.errors import Conflict, Invalid, NotFound
from heron.services.lookup import find_pool, live_nodes
from heron.storage.probe import probe
from heron.storage.registry import capabilities, definition_problem, driver_for


async def create(db: ConfigDB, spec: PoolSpec) -> tuple[Pool, int]:
    """Define a pool; returns it with its revision."""
    pool = Pool(**spec.model_dump(), created_at=time.time())
    if problem := definition_problem(pool):
        raise Invalid(f"body.{problem[0]}", problem[1])
    try:
        return pool, await db.create(keys.pool(pool.name), pool)
    except StoreConflict as exc:
        raise Conflict(f"pool {pool.name} already exists") from exc


async def delete(db: ConfigDB, name: str) -> None:
    """Delete a pool that has no volumes any more."""
    entry = await find_pool(db, name)
    if any(v.value.pool == name for v in await db.list(Volume, keys.VOLUMES)):
        raise Conflict(f"pool {name} still has volumes")
    # An ardfs pool's peer key goes with it (a pool made again under that name gets another).
    gone = Txn().require_revision(entry.key, entry.revision).delete(entry.key)
    await db.commit(gone.delete(keys.ardfs_secret(name)))
    # Its members, their disks' status and old tombstones: each node's agent then stops the
    # pool's heron-io. One by one: a transaction holds at most 128 operations.
    for prefix in (keys.ARDFS_MEMBERS, keys.ARDFS_STATUS, keys.ARDFS_DELETED):
        for key in await db.dump(f"{prefix}{name}/"):
            await db.delete(key)


async def add_disk(
    db: ConfigDB,
    name: str,
    node: str,
    path: str,
    site: str | None,
    weight: float,
    device_class: DeviceClass | None = None,
) -> ArdfsMember:
    """Give the pool a directory of `node` for its chunks (a disk, as the pool sees it). Its
    device class is `device_class` when given, else the node's agent detects it."""
    pool = (await find_pool(db, name)).value
    if not capabilities(pool).member_disks:
        raise Conflict(f"pool {name} ({pool.type}) takes no disks; only ardfs pools do")
    if node not in await live_nodes(db):
        raise Invalid("body.node", f"no live node {node!r}")
    key = keys.ardfs_member(name, node)

    async def attempt() -> ArdfsMember:
        # Read again after a lost swap: its heron-io may have registered meanwhile.
        members = await db.list(ArdfsMember, f"{keys.ARDFS_MEMBERS}{name}/")
        entry = next((e for e in members if e.value.node == node), None)
        member = entry.value if entry else ArdfsMember(pool=name, node=node)
        if any(d.path == path for d in member.disks):
            raise Conflict(f"{node}:{path} is already a disk of pool {name}")
        taken = {d.id for e in members for d in e.value.disks}
        disk_id = next(i for i in (f"d{new_id()[:8]}" for _ in range(100)) if i not in taken)
        disk = ArdfsDisk(id=disk_id, path=path, weight=weight)
        if device_class is not None:
            disk = disk.model_copy(
                update={"device_class": device_class, "class_source": "set", "class_note": ""}
            )
        disks = [*member.disks, disk]
        member = member.model_copy(update={"disks": disks, "site": site or member.site})
        await db.put(key, member, revision=entry.revision if entry else 0)
        return member

    return await cas.retry(attempt, f"the membership of {node} in pool {name}")


async def remove_disk(db: ConfigDB, name: str, disk: str) -> ArdfsMember:
    """Take a disk out of the pool; refused when the disks left (of a device class its
    volumes are placed on) would be fewer than the protection spans, or when the pool keeps
    one copy (rf1) and volumes are placed on it. The leader then makes the copies it held
    again from the others."""
    pool = (await find_pool(db, name)).value

    async def attempt() -> ArdfsMember:
        members = await db.list(ArdfsMember, f"{keys.ARDFS_MEMBERS}{name}/")
        entry = next((e for e in members if any(d.id == disk for d in e.value.disks)), None)
        if entry is None:
            raise NotFound(f"pool {name} has no disk {disk!r}")
        gone = next(d for d in entry.value.disks if d.id == disk)
        await _may_leave(db, pool, [e.value for e in members], gone, None, "taken out")
        disks = [d for d in entry.value.disks if d.id != disk]
        member = entry.value.model_copy(update={"disks": disks})
        await db.put(entry.key, member, revision=entry.revision)
        return member

    return await cas.retry(attempt, f"the disks of pool {name}")


async def set_disk_class(
    db: ConfigDB, name: str, disk: str, device_class: DeviceClass
) -> tuple[ArdfsMember, ArdfsDisk, ArdfsDisk]:
    """Set a disk's device class; returns its member record and the disk before and after.
    Where the pool, or volumes of it, ask for a class, a disk leaving that class is like a
    disk taken out for them: the leader moves the copies it holds onto the class's other
    disks (so refused when those would be fewer than the protection spans, or when the pool
    keeps one copy and such volumes are placed on it); a disk joining a class has its
    volumes spread onto it."""
    pool = (await find_pool(db, name)).value

    async def attempt() -> tuple[ArdfsMember, ArdfsDisk, ArdfsDisk]:
        members = await db.list(ArdfsMember, f"{keys.ARDFS_MEMBERS}{name}/")
        entry = next((e for e in members if any(d.id == disk for d in e.value.disks)), None)
        if entry is None:
            raise NotFound(f"pool {name} has no disk {disk!r}")
        before = next(d for d in entry.value.disks if d.id == disk)
        after = before.model_copy(
            update={"device_class": device_class, "class_source": "set", "class_note": ""}
        )
        becoming = f"made a {device_class} disk"
        await _may_leave(db, pool, [e.value for e in members], before, after, becoming)
        disks = [after if d.id == disk else d for d in entry.value.disks]
        member = entry.value.model_copy(update={"disks": disks})
        await db.put(entry.key, member, revision=entry.revision)
        return member, before, after

    return await cas.retry(attempt, f"the disks of pool {name}")


async def _may_leave(
    db: ConfigDB,
    pool: Pool,
    members: list[ArdfsMember],
    before: ArdfsDisk,
    after: ArdfsDisk | None,
    becoming: str,
) -> None:
    """Refuse (409) to take a disk (`after` None) or its class (`after`) from the volumes of
    each device class it leaves (the pool's, those its volumes ask for; none: any disk) when
    that class would keep fewer disks than the protection spans, or when the pool keeps one
    copy and such volumes are placed on it: what the disk holds exists nowhere else, and the
    move that follows would have nothing to copy from."""
    volumes = [v.value for v in await db.list(Volume, keys.VOLUMES) if v.value.pool == pool.name]
    classes = {pool.device_class} | {v.device_class for v in volumes if v.device_class}
    for wanted in sorted(classes, key=lambda c: c or ""):
        if not of_class(wanted, before) or (after is not None and of_class(wanted, after)):
            continue  # it was not of that class, or stays of it
        left = sum(1 for m in members for d in m.disks if d.id != before.id and of_class(wanted, d))
        if left < pool.width:
            kind = f"{wanted} disks" if wanted else "disks"
            whose = "" if wanted in (None, pool.device_class) else f" for its {wanted} volumes"
            raise Conflict(
                f"pool {pool.name} would keep {left} {kind}{whose}, {pool.protection} needs "
                f"{pool.width}: add {f'another {wanted} disk' if wanted else 'a disk'} first"
            )
        if pool.redundancy.width != 1:
            continue
        only = sorted(v.name for v in volumes
                      if (v.device_class or pool.device_class) == wanted
                      and _placed_on(v, before.id))  # fmt: skip
        if only:
            raise Conflict(
                f"pool {pool.name} keeps one copy ({pool.protection}) and volumes "
                f"{', '.join(only[:5])}{' ...' if len(only) > 5 else ''} have blocks only "
                f"on disk {before.id}: it cannot be {becoming}; delete them first"
            )


def _placed_on(volume: Volume, disk: str) -> bool:
    """Whether the volume may have blocks on the disk; one not pinned yet may have them on
    any (its first heron-io pins the pool's disks)."""
    if volume.placement is None and volume.moving_to is None:
        return True
    return any(d.id == disk for d in [*(volume.placement or []), *(volume.moving_to or [])])


async def capacity(db: ConfigDB, state_dir: Path, pool: Pool) -> PoolCapacity | None:
    """What the pool's volumes can hold and have left, after redundancy; None where no one
    figure fits (a local pool differs by node, an array's LUNs are its own) or it is unknown."""
    can = capabilities(pool)
    driver = driver_for(pool, state_dir)
    if can.member_disks:
        nodes = await db.list(ArdfsNodeStatus, f"{keys.ARDFS_STATUS}{pool.name}/")
        members = await db.list(ArdfsMember, f"{keys.ARDFS_MEMBERS}{pool.name}/")
        # Only the disks its volumes may be placed on (of its class, if it asks for one).
        counted = {d.id for m in members for d in m.value.disks if pool.takes(d)}
        disks = [u for e in nodes for d, u in e.value.disks.items() if d in counted]
        if not disks:
            return None
        total = sum(d.total_bytes for d in disks)
        free = sum(d.free_bytes for d in disks)
        return PoolCapacity(
            total_bytes=driver.usable_capacity(total),
            free_bytes=driver.usable_capacity(free),
            raw_total_bytes=total,
            raw_free_bytes=free,
        )
    if not can.shared or can.scanned:
        return None
    found = await probe(pool.name, driver.capacity)
    if found is None:
        return None
    return PoolCapacity(
        total_bytes=found[0], free_bytes=found[1], raw_total_bytes=found[0], raw_free_bytes=found[1]
    )
