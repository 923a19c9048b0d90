"""Finding the objects a request names, and reads of cluster-wide state services share."""

from heron.configdb import ConfigDB, Entry, keys
from heron.models.storage import (
    ArdfsMember,
    DeviceClass,
    PlacedDisk,
    Pool,
    Volume,
    VolumeFormat,
    of_class,
)
from heron.models.vm import VM
from heron.scheduler.inventory import live_nodes
from heron.services.errors import Invalid, NotFound
from heron.storage.registry import capabilities

__all__ = [
    "attached",
    "find_pool",
    "find_vm",
    "find_volume",
    "live_nodes",
    "new_placement",
    "new_volume_format",
]


async def find_vm(db: ConfigDB, ref: str) -> Entry[VM]:
    """A VM by id or by name."""
    entry = await db.get(VM, keys.vm(ref)) if "/" not in ref else None
    if entry is None and "/" not in ref:
        index = await db.get_raw(keys.vm_name(ref))
        if index is not None:
            entry = await db.get(VM, keys.vm(index[0].decode()))
    if entry is None:
        raise NotFound(f"no VM {ref!r}")
    return entry


async def find_pool(db: ConfigDB, name: str, field: str | None = None) -> Entry[Pool]:
    entry = await db.get(Pool, keys.pool(name)) if "/" not in name else None
    if entry is None:
        if field is not None:
            raise Invalid(field, f"no pool {name!r}")
        raise NotFound(f"no pool {name!r}")
    return entry


async def find_volume(db: ConfigDB, pool: str, ref: str) -> Entry[Volume]:
    """A volume of `pool` by id or name."""
    entry = await db.get(Volume, keys.volume(ref)) if "/" not in ref else None
    if entry is None and "/" not in ref:
        index = await db.get_raw(keys.volume_name(pool, ref))
        if index is not None:
            entry = await db.get(Volume, keys.volume(index[0].decode()))
    if entry is None or entry.value.pool != pool:
        raise NotFound(f"no volume {ref!r} in pool {pool!r}")
    return entry


def new_volume_format(
    pool: Pool, fmt: VolumeFormat | None, pool_field: str, format_field: str
) -> VolumeFormat:
    """The format of a new volume in `pool` (`fmt` None: not given, the pool's default);
    refuses pools whose volumes are not created here and formats a pool does not hold."""
    can = capabilities(pool)
    if can.scanned:
        raise Invalid(
            pool_field,
            f"pool {pool.name} ({pool.type}) holds the array's LUNs: make the LUN there, "
            f"scan the pool (POST /pools/{pool.name}/scan) and use the volume it finds",
        )
    if fmt is not None and fmt not in can.formats:
        held = " or ".join(f.value for f in can.formats)
        raise Invalid(format_field, f"an {pool.type} pool holds {held} volumes")
    return fmt or can.formats[0]


async def new_placement(
    db: ConfigDB,
    pool: Pool,
    field: str,
    device_class: DeviceClass | None = None,
    class_field: str = "body.device_class",
) -> list[PlacedDisk] | None:
    """ardfs: the disks a new volume's blocks are placed over: every member's of its device
    class (`device_class`, else the pool's; any disk when neither asks for one), but those of
    nodes that are down while enough others remain (their copies would only be moved off
    again); None for other pools. Refused while the pool has too few such disks."""
    if not capabilities(pool).member_disks:
        if device_class is not None:
            raise Invalid(class_field, f"pool {pool.name} ({pool.type}) has no disks of its own")
        return None
    if device_class is not None and pool.device_class not in (None, device_class):
        raise Invalid(class_field, f"pool {pool.name} places on {pool.device_class} disks only")
    wanted = device_class or pool.device_class
    members = await db.list(ArdfsMember, f"{keys.ARDFS_MEMBERS}{pool.name}/")
    disks = placeable(pool, [m.value for m in members], wanted)
    live = await live_nodes(db)
    up = [d for d in disks if d.node in live]
    chosen = up if len(up) >= pool.width else disks
    if len(chosen) < pool.width:
        raise Invalid(field, too_few(pool, chosen, wanted))
    return chosen


def placeable(pool: Pool, members: list[ArdfsMember], wanted: str | None) -> list[PlacedDisk]:
    """ardfs: the disks of members with a heron-io that are of the class `wanted` (any disk:
    None), sorted by id."""
    return sorted(
        (
            PlacedDisk(id=d.id, node=m.node, site=m.site, weight=d.weight)
            for m in members
            if m.address
            for d in m.disks
            if of_class(wanted, d)
        ),
        key=lambda d: d.id,
    )


def too_few(pool: Pool, disks: list[PlacedDisk], wanted: str | None) -> str:
    """Why `disks` (of the class `wanted`) are too few for the pool's protection, with the
    counts."""
    nodes = len({d.node for d in disks})
    kind = f"{wanted} disks" if wanted else "disks"
    return (
        f"pool {pool.name} has {len(disks)} {kind} (on {nodes} node{'s' * (nodes != 1)}), "
        f"{pool.protection} needs {pool.width}: give it "
        f"{kind} first (POST /pools/{pool.name}/disks)"
    )


def memory_state_of(volume: Volume) -> str | None:
    """Why `volume` is not to be used or changed as a disk: it holds a snapshot's memory
    state (it goes when that snapshot is deleted); None for any other volume."""
    if volume.state_of is None:
        return None
    return (
        f"volume {volume.name} holds the memory state of snapshot {volume.state_of.snapshot} "
        f"of VM {volume.state_of.vm}: it is no disk, and goes when that snapshot is deleted"
    )


def attached(vms: list[VM]) -> dict[str, str]:
    """volume id -> name of the VM using it."""
    return {disk.volume: vm.spec.name for vm in vms for disk in vm.spec.disks}
