"""Virtual machines: plan and create them (one or a batch), change them, power actions,
live migration and deletion. Each call checks the request against the cluster's state,
writes the change with the task that carries it out in one transaction, and raises
`services.errors` when it cannot."""

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from pydantic import ValidationError

from heron.agent import migration
from heron.audit import AuditLog
from heron.configdb import ConfigDB, Entry, Txn, keys
from heron.configdb.store import Conflict as StoreConflict
from heron.models.common import new_id
from heron.models.group import VMGroup
from heron.models.hotplug import plan_live
from heron.models.migration import MigrateRequest
from heron.models.network import BUILTIN_NETWORKS
from heron.models.node import Node
from heron.models.storage import Volume
from heron.models.task import (
    MigrateParams,
    NewVolume,
    PowerParams,
    Task,
    TaskKind,
    TaskParams,
    VMCreateParams,
    VMDeleteParams,
    new_task,
)
from heron.models.vm import (
    NIC_SLOTS,
    VM,
    BatchCreate,
    CloneRequest,
    DiskAttach,
    DiskSpec,
    DiskUpdate,
    Hardware,
    NicAttach,
    NicSpec,
    NicUpdate,
    PowerState,
    RunState,
    VMCreate,
    VMSpec,
    VMStatus,
    VMUpdate,
    free_disk_slot,
    free_slot,
    reserved_memory_mib,
    reserved_vcpus,
)
from heron.network.ipam import release_nics
from heron.scheduler.inventory import Inventory, group_of
from heron.scheduler.placement import (
    NoCapacity,
    NotAllowed,
    UnknownNode,
    affinity_for,
    migration_target,
    node_loads,
)
from heron.services import clones, dr
from heron.services.errors import Conflict, Invalid, NotFound
from heron.services.lookup import (
    attached,
    find_pool,
    find_vm,
    live_nodes,
    memory_state_of,
    new_placement,
    new_volume_format,
)
from heron.services.networks import address_nics
from heron.services.plan import Plan, asked_node, narrowed, place, refuse_taken_name
from heron.services.secgroups import check_nics
from heron.services.tasks import with_task

Action = Literal["start", "shutdown", "stop", "reboot", "pause", "resume"]

_DESIRED: dict[str, PowerState | None] = {
    "start": PowerState.running,
    "resume": PowerState.running,
    "pause": PowerState.paused,
    "stop": PowerState.stopped,
    "shutdown": PowerState.stopped,
    "reboot": None,
}


@dataclass
class NicChange:
    """A VM with its NICs changed, and the task that applies them to its running QEMU."""

    vm: Entry[VM]
    task: Task | None


@dataclass
class HardwareChange:
    """A VM with its hardware changed, and the task that gives the running QEMU what it can
    take at once (`hotplug.plan_live`); the rest is pending until its next start."""

    vm: Entry[VM]
    task: Task | None


async def create(db: ConfigDB, inventory: Inventory, body: VMCreate, user: str) -> Plan:
    """Define a VM and create its disks (a `vm.create` task on its node does the work)."""
    inventory = await inventory.ready()
    plan = await plan_create(db, body, inventory.live_nodes(), inventory.vms.values(), user)
    try:
        revision = await db.commit(plan.txn)
    except StoreConflict as exc:
        raise Conflict(f"a VM named {body.name!r} or one of its volumes already exists") from exc
    # The next create through this node must count this VM where it was placed.
    await inventory.vms.wait_for(revision)
    return plan


async def create_batch(
    db: ConfigDB, inventory: Inventory, body: BatchCreate, user: str
) -> list[Plan]:
    """Mass deployment: place every VM first (each one counting against the next), refuse
    all if any does not fit, then create them; with `dry_run` nothing is written."""
    inventory = await inventory.ready()
    nodes, vms = inventory.live_nodes(), inventory.vms.values()
    width = max(3, len(str(body.count)))
    plans = []
    template = await _batch_template(db, body)
    for i in range(1, body.count + 1):
        name = f"{body.name}-{i:0{width}}"
        if template is not None:
            request = CloneRequest(
                name=name,
                linked=body.linked,
                pool=body.pool,
                node=body.node,
                start=body.start,
                description=body.description or None,
                cloud_init=body.cloud_init,
            )
            plan = await clones.plan_clone(db, template, request, nodes, vms, user, None)
            vms.append(plan.vm)
            plans.append(plan)
            continue
        one = VMCreate(
            **body.model_dump(exclude={"name", "count", "dry_run", "template", "linked", "pool"}),
            name=name,
        )
        plan = await plan_create(db, one, nodes, vms, user)
        vms.append(plan.vm)
        plans.append(plan)
    if body.dry_run:
        return plans
    for plan in plans:
        try:
            revision = await db.commit(plan.txn)
        except StoreConflict as exc:
            raise Conflict(f"{plan.vm.spec.name} was created meanwhile; stopped there") from exc
    await inventory.vms.wait_for(revision)
    return plans


async def _batch_template(db: ConfigDB, body: BatchCreate) -> VM | None:
    """The template a batch is cloned from, if it names one; refuses what it then decides."""
    if body.template is None:
        if "linked" in body.model_fields_set or body.pool is not None:
            field = "body.linked" if "linked" in body.model_fields_set else "body.pool"
            raise Invalid(field, "is for a batch cloned from a template (give `template`)")
        return None
    if body.disks:
        raise Invalid("body.disks", "a batch from a template gets its disks from the template")
    try:
        vm = (await find_vm(db, body.template)).value
    except NotFound as exc:
        raise Invalid("body.template", f"no VM {body.template!r}") from exc
    if not vm.template:
        raise Invalid("body.template", f"VM {vm.spec.name} is not a template")
    return vm


# What makes the new volumes' data, given them in disk order: a `vm.create` task by default.
TaskFor = Callable[[list[Volume]], tuple[TaskKind, TaskParams]]


async def plan_create(
    db: ConfigDB,
    body: VMCreate,
    nodes: dict[str, Node],
    vms: list[VM],
    user: str,
    task_for: TaskFor | None = None,
) -> Plan:
    """Check a create request and place the VM; the transaction that makes it, unwritten.
    `task_for`: the task that fills its new volumes, when not a `vm.create` (a V2V import)."""
    await refuse_taken_name(db, body.name, vms)
    in_use = attached(vms)
    now = time.time()
    vm_id = new_id()
    disks: list[DiskSpec] = []
    new_volumes: list[tuple[Volume, str | None]] = []
    pinned = asked_node(nodes, body.node)  # narrowed by node-local volumes
    group = None
    if body.group is not None:
        found = await db.get(VMGroup, keys.group(body.group))
        if found is None:
            raise Invalid("body.group", f"no group {body.group!r}")
        group = found.value

    for index, disk in enumerate(body.disks):
        field = f"body.disks.{index}"
        if disk.volume is not None:
            volume = await volume_by_ref(db, disk.volume, f"{field}.volume")
            if volume.id in in_use:
                raise Conflict(f"volume {disk.volume} is used by VM {in_use[volume.id]}")
            if await db.get_raw(keys.iscsi_export(volume.id)) is not None:
                raise Conflict(f"volume {disk.volume} is exported over iSCSI")
            pinned = narrowed(pinned, volume.node, f"{field}.volume")
            disks.append(DiskSpec(bus=disk.bus, volume=volume.id))
            continue
        assert disk.pool is not None  # DiskRequest's validator: a volume, or a pool
        pool = (await find_pool(db, disk.pool, f"{field}.pool")).value
        fmt = new_volume_format(pool, disk.format, f"{field}.pool", f"{field}.format")
        source_id = None
        size = disk.size or 0
        if disk.source is not None:
            source = await volume_by_ref(db, disk.source, f"{field}.source")
            if source.state != "ready":
                raise Invalid(f"{field}.source", f"volume is {source.state}")
            pinned = narrowed(pinned, source.node, f"{field}.source")
            source_id = source.id
            if size and size < source.size:
                raise Invalid(f"{field}.size", f"smaller than the source ({source.size} bytes)")
        volume = Volume(
            id=new_id(),
            pool=pool.name,
            name=f"{body.name}-disk{index}",
            format=fmt,
            size=size,
            node=None,
            placement=await new_placement(db, pool, f"{field}.pool"),
            created_at=now,
        )
        if await db.get_raw(keys.volume_name(pool.name, volume.name)) is not None:
            raise Conflict(f"pool {pool.name} already has a volume {volume.name}")
        new_volumes.append((volume, source_id))
        disks.append(DiskSpec(bus=disk.bus, volume=volume.id))
    await check_nics(db, body.nics)
    made = [NewVolume(id=v.id, source=s) for v, s in new_volumes]
    kind, params = (
        task_for([v for v, _ in new_volumes])
        if task_for is not None
        else (TaskKind.vm_create, VMCreateParams(volumes=made))
    )
    return await place(
        db,
        vm_id,
        {**body.model_dump(include=set(Hardware.model_fields)), "name": body.name},
        disks,
        body.nics,
        [v for v, _ in new_volumes],
        nodes=nodes,
        vms=vms,
        pinned=pinned,
        rule=affinity_for(vm_id, group, vms),
        start=body.start,
        now=now,
        task=(kind, params, user),
    )


async def volume_by_ref(db: ConfigDB, ref: str, field: str) -> Volume:
    """A volume named as pool/name, or by id; `field` is the input that named it."""
    if "/" in ref:
        pool, _, name = ref.partition("/")
        index = await db.get_raw(keys.volume_name(pool, name))
        entry = await db.get(Volume, keys.volume(index[0].decode())) if index else None
    else:
        entry = await db.get(Volume, keys.volume(ref))
    if entry is None:
        raise Invalid(field, f"no volume {ref!r}")
    if why := memory_state_of(entry.value):
        raise Invalid(field, why)
    return entry.value


# Limits a null in an update takes away (other fields given as null are left as they are).
_CLEARABLE = {
    "group",
    "max_vcpus",
    "max_memory_mib",
    "cpu_weight",
    "cpu_limit",
    "memory_limit_mib",
    "cloud_init",
}


async def update(db: ConfigDB, ref: str, body: VMUpdate, user: str = "") -> HardwareChange:
    """Change a VM's hardware and policies; a running VM gets at once what it can take
    (vCPUs and memory up to its maxima, CPU and memory limits) by a `vm.hardware` task, the
    rest at its next start. `body.revision` guards the write. A `group` or a limit given as
    null takes it away."""
    entry = await find_vm(db, ref)
    changes = {
        name: value
        for name, value in body.model_dump(exclude_unset=True, exclude={"revision"}).items()
        if value is not None or name in _CLEARABLE
    }
    if changes.get("group") is not None and await db.get_raw(keys.group(changes["group"])) is None:
        raise Invalid("body.group", f"no group {changes['group']!r}")
    if any(f in changes for f in ("max_vcpus", "max_memory_mib", "vcpus", "memory_mib")):
        await _check_reserve(db, entry.value, changes)
    return await _change_hardware(db, entry, body.revision, changes, user)


async def _check_reserve(db: ConfigDB, vm: VM, changes: Mapping[str, object]) -> None:
    """A VM may not grow its reservation past what its node has free."""
    merged = _merged(vm, changes)
    nodes = await live_nodes(db)
    if vm.node not in nodes or vm.power == PowerState.stopped:
        return  # its node is away: HA places it with what it asks for when it comes back
    others = [e.value for e in await db.list(VM, keys.VMS) if e.value.id != vm.id]
    load = node_loads({vm.node: nodes[vm.node]}, others)[0]
    need = reserved_memory_mib(merged)
    if need > reserved_memory_mib(vm.spec) and not load.fits(need):
        free = load.memory_mib - load.memory_used_mib
        raise Conflict(f"node {vm.node} has {free} MiB free for VMs, the VM would reserve {need}")


def _invalid(exc: ValueError) -> Invalid:
    """A spec the change would make, refused: the first reason, with where it is."""
    if isinstance(exc, ValidationError) and exc.errors():
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        return Invalid(f"body.{where}" if where else "body", first["msg"])
    return Invalid("body", str(exc) or "invalid")


def _merged(vm: VM, changes: Mapping[str, object]) -> VMSpec:
    try:
        return VMSpec.model_validate({**vm.spec.model_dump(), **changes})
    except ValueError as exc:
        raise _invalid(exc) from exc


async def _change_hardware(
    db: ConfigDB,
    entry: Entry[VM],
    revision: int | None,
    changes: Mapping[str, object],
    user: str,
) -> HardwareChange:
    """Write a hardware change; with a `vm.hardware` task when the running QEMU can take
    some of it at once."""
    vm = entry.value
    status = await db.get(VMStatus, keys.vm_status(vm.id))
    task = None
    txn = Txn()
    if (
        status is not None
        and status.value.state in (RunState.running, RunState.paused)
        and status.value.hardware is not None
        and plan_live(status.value.hardware, _merged(vm, changes)).live
    ):
        task = new_task(TaskKind.vm_hardware, vm.node, vm.id, user)
        with_task(txn, task)
    written = await _revise(db, entry, revision, changes, txn)
    return HardwareChange(vm=written, task=task)


async def update_disk(
    db: ConfigDB, ref: str, index: int, body: DiskUpdate, user: str
) -> HardwareChange:
    """Set a disk's I/O limits; a running VM gets them at once."""
    entry = await find_vm(db, ref)
    vm = entry.value
    if not 0 <= index < len(vm.spec.disks):
        raise NotFound(f"VM {vm.spec.name} has no disk{index}")
    disks = [
        {**d.model_dump(), "qos": body.qos.model_dump()} if i == index else d.model_dump()
        for i, d in enumerate(vm.spec.disks)
    ]
    return await _change_hardware(db, entry, body.revision, {"disks": disks}, user)


async def attach_disk(db: ConfigDB, ref: str, body: DiskAttach, user: str = "") -> HardwareChange:
    """Give a VM an existing volume as its next disk: plugged into it at once if it runs
    (layout 3, virtio: the disk gets a hot-pluggable slot), else used from its next start."""
    entry = await find_vm(db, ref)
    vm = entry.value
    volume = await volume_by_ref(db, body.volume, "body.volume")
    if volume.state != "ready":
        raise Conflict(f"volume {volume.name} is {volume.state}")
    other = attached([e.value for e in await db.list(VM, keys.VMS)]).get(volume.id)
    if other is not None:
        raise Conflict(f"volume {volume.name} is a disk of VM {other}")
    if await db.get_raw(keys.iscsi_export(volume.id)) is not None:
        raise Conflict(f"volume {volume.name} is exported over iSCSI")
    if volume.node not in (None, vm.node):
        raise Invalid(
            "body.volume", f"volume {volume.name} is on node {volume.node}, the VM on {vm.node}"
        )
    slot = free_disk_slot(vm.spec.disks) if vm.spec.layout >= 3 and body.bus == "virtio" else None
    disk = DiskSpec(bus=body.bus, volume=volume.id, slot=slot, qos=body.qos)
    disks = [*vm.spec.disks, disk]
    changes = {"disks": [d.model_dump() for d in disks]}
    return await _change_hardware(db, entry, body.revision, changes, user)


async def detach_disk(db: ConfigDB, ref: str, index: int, user: str = "") -> HardwareChange:
    """Take disk `index` from a VM; its volume stays, free for another VM. A running VM
    gives up only its last disk, one plugged into a slot (the guest must release it)."""
    entry = await find_vm(db, ref)
    vm = entry.value
    if not 0 <= index < len(vm.spec.disks):
        raise NotFound(f"VM {vm.spec.name} has no disk{index}")
    await clones.refuse_if_read(
        db, f"disk{index} of VM {vm.spec.name} stays", [vm.spec.disks[index].volume]
    )
    disks = [d.model_dump() for i, d in enumerate(vm.spec.disks) if i != index]
    status = await db.get(VMStatus, keys.vm_status(vm.id))
    running = status is not None and status.value.state in (RunState.running, RunState.paused)
    if vm.power != PowerState.stopped or running:
        hardware = status.value.hardware if status is not None and running else None
        plan = plan_live(hardware, _merged(vm, {"disks": disks})) if hardware else None
        if plan is None or index not in plan.remove_disks:
            # Its QEMU still writes to the volume: free, it could be given to another VM.
            raise Conflict(
                f"VM {vm.spec.name} is running: only its last disk, one plugged in while it "
                "ran, can be taken away now; switch it off to take this one"
            )
    return await _change_hardware(db, entry, None, {"disks": disks}, user)


async def attach_nic(db: ConfigDB, ref: str, body: NicAttach, user: str) -> NicChange:
    """Give a VM one more NIC, with its MAC and address; plugged in at once if it runs."""
    entry = await find_vm(db, ref)
    vm = entry.value
    slot = free_slot(vm.spec.nics)
    if slot is None:
        raise Conflict(f"VM {vm.spec.name} has {NIC_SLOTS} NICs: no slot is free")
    asked = NicSpec(**body.model_dump(exclude={"revision"}), slot=slot)
    await check_nics(db, [asked], field="body")
    vms = [e.value for e in await db.list(VM, keys.VMS)]
    index = len(vm.spec.nics)
    (nic,), addressed = await address_nics(db, vm.id, [asked], vms, index)
    nics = [*vm.spec.nics, nic]
    return await _change_nics(db, entry, body.revision, nics, addressed, user)


async def update_nic(db: ConfigDB, ref: str, index: int, body: NicUpdate, user: str) -> NicChange:
    """Move a NIC to another network, give it another address, or pull its cable."""
    entry = await find_vm(db, ref)
    vm = entry.value
    old = _nic(vm, index)
    changes = body.model_dump(exclude_unset=True, exclude={"revision"})
    if "network" in changes and changes["network"] != old.network and "address" not in changes:
        changes["address"] = None  # a new network: a new address from its subnet
    if "security_groups" in changes and changes["security_groups"] is None:
        changes["security_groups"] = []
    nic = old.model_copy(update=changes)
    await check_nics(db, [nic], field="body")
    txn = Txn()
    if (nic.network, nic.address) != (old.network, old.address):
        vms = [e.value for e in await db.list(VM, keys.VMS)]
        (nic,), txn = await address_nics(db, vm.id, [nic], vms, index)
        if old.address and old.network not in BUILTIN_NETWORKS:
            txn.delete(keys.lease(old.network, old.address))
    nics = [nic if i == index else n for i, n in enumerate(vm.spec.nics)]
    return await _change_nics(db, entry, body.revision, nics, txn, user)


async def detach_nic(db: ConfigDB, ref: str, index: int, user: str) -> NicChange:
    """Take a NIC from a VM (out of the running guest too), giving back its MAC and address."""
    entry = await find_vm(db, ref)
    vm = entry.value
    nic = _nic(vm, index)
    nics = [n for i, n in enumerate(vm.spec.nics) if i != index]
    return await _change_nics(db, entry, None, nics, release_nics(Txn(), [nic]), user)


def _nic(vm: VM, index: int) -> NicSpec:
    if not 0 <= index < len(vm.spec.nics):
        raise NotFound(f"VM {vm.spec.name} has no NIC {index}")
    return vm.spec.nics[index]


async def _change_nics(
    db: ConfigDB,
    entry: Entry[VM],
    revision: int | None,
    nics: list[NicSpec],
    txn: Txn,
    user: str,
) -> NicChange:
    """Write a VM's new NICs; a running VM of layout 2 gets them at once, by a `vm.nics` task
    on its node (others at their next start)."""
    vm = entry.value
    status = await db.get(VMStatus, keys.vm_status(vm.id))
    running = status is not None and status.value.state in (RunState.running, RunState.paused)
    task = None
    if running and vm.spec.layout >= 2:
        task = new_task(TaskKind.vm_nics, vm.node, vm.id, user)
        with_task(txn, task)
    changes = {"nics": [n.model_dump() for n in nics]}
    written = await _revise(db, entry, revision, changes, txn)
    return NicChange(vm=written, task=task)


async def _revise(
    db: ConfigDB,
    entry: Entry[VM],
    revision: int | None,
    changes: Mapping[str, object],
    extra: Txn | None = None,
) -> Entry[VM]:
    """Write `changes` to a VM's spec if it is still at `revision` (when given), with `extra`
    (index keys, a task) in the same transaction."""
    ref = entry.value.spec.name
    if revision is not None and revision != entry.revision:
        raise Conflict(
            f"VM {ref} changed since revision {revision} (now {entry.revision}); read it again"
        )
    vm = entry.value.model_copy(deep=True)
    try:
        spec = VMSpec.model_validate({**vm.spec.model_dump(), **changes})
    except ValueError as exc:
        raise _invalid(exc) from exc
    vm.spec = spec
    txn = Txn().require_revision(entry.key, entry.revision).put(entry.key, vm)
    if extra is not None:
        txn.merge(extra)
    if spec.name != entry.value.spec.name:
        txn.require_absent(keys.vm_name(spec.name)).put(keys.vm_name(spec.name), vm.id)
        txn.delete(keys.vm_name(entry.value.spec.name))
    try:
        written = await db.commit(txn)
    except StoreConflict as exc:
        raise Conflict(f"VM {ref} was changed by someone else, or the name is taken") from exc
    return Entry(entry.key, vm, written)


async def migrate(
    db: ConfigDB, ref: str, request: MigrateRequest, user: str, audit: AuditLog | None = None
) -> Task:
    """Live-migrate a running VM to `request.target`, or to the best node if none is named.
    A migration record that its target, gone from the cluster, never closed is closed first
    when that is safe (`models.migration.takeover`, audited); otherwise the refusal says
    what keeps it and what will clear it."""
    entry = await find_vm(db, ref)
    vm = entry.value
    status = await db.get(VMStatus, keys.vm_status(vm.id))
    state = status.value.state if status else None
    if vm.power == PowerState.stopped or state not in (RunState.running, RunState.paused):
        raise Conflict(f"VM {vm.spec.name} is not running; start it where you want it instead")
    stale = await migration.close_stale(db, vm, audit, user)
    if stale is not None and not stale.close:
        raise Conflict(f"VM {vm.spec.name} is already migrating: {stale.why}")
    if refused := await migration.refusal(db, vm):
        raise Conflict(refused)
    if rounds := await dr.tasks_of(db, vm.id):
        raise Conflict(
            f"VM {vm.spec.name} is being replicated (task {rounds[0].id}): migrate it after"
        )
    nodes = await live_nodes(db)
    if vm.node not in nodes:
        raise Conflict(f"the VM's node {vm.node} is not online")
    vms = [e.value for e in await db.list(VM, keys.VMS) if e.value.id != vm.id]
    rule = affinity_for(vm.id, await group_of(db, vm), vms)
    try:
        target = migration_target(
            node_loads(nodes, vms),
            vm.node,
            reserved_memory_mib(vm.spec),
            reserved_vcpus(vm.spec),
            rule,
            request.target,
        )
    except UnknownNode as exc:
        raise Invalid("body.target", str(exc)) from exc
    except (NoCapacity, NotAllowed) as exc:
        raise Conflict(str(exc)) from exc
    params = MigrateParams(target=target, **request.model_dump(exclude={"target"}))
    task = new_task(TaskKind.vm_migrate, vm.node, vm.id, user, params)
    await db.commit(with_task(Txn().require_revision(entry.key, entry.revision), task))
    return task


async def power(db: ConfigDB, ref: str, action: Action, timeout: float, user: str) -> Task:
    """A power action. The desired power state is written with the task in one transaction,
    so a node that restarts mid-way still knows what the VM should be doing."""
    entry = await find_vm(db, ref)
    vm = entry.value.model_copy(deep=True)
    params = PowerParams(timeout=timeout, graceful=action == "shutdown")
    task = new_task(TaskKind(f"vm.{action}"), vm.node, vm.id, user, params)
    txn = Txn().require_revision(entry.key, entry.revision)
    desired = _DESIRED[action]
    if vm.template and desired in (PowerState.running, PowerState.paused):
        raise Conflict(f"VM {vm.spec.name} is a template: it does not start; clone it")
    if desired == PowerState.running and (busy := await clones.cloning_from(db, vm.id)):
        raise Conflict(f"VM {vm.spec.name} is being cloned (task {busy.id}): start it after")
    if desired is not None:
        if action == "resume" and vm.power != PowerState.paused:
            raise Conflict(f"VM {vm.spec.name} is not paused")
        vm.power = desired
        vm.generation += 1
        txn.put(entry.key, vm)
    elif vm.power != PowerState.running:
        raise Conflict(f"VM {vm.spec.name} is not running")
    await db.commit(with_task(txn, task))
    return task


async def delete(db: ConfigDB, ref: str, volumes: bool, user: str) -> Task:
    """Delete a VM (stopping it first), and its volumes if asked; a delete already under way
    is the answer to a second request."""
    entry = await find_vm(db, ref)
    vm = entry.value
    for found in await db.list(Task, keys.TASKS):
        t = found.value
        if t.target == vm.id and t.kind == TaskKind.vm_delete and not t.state.finished:
            return t
    what = f"{'template' if vm.template else 'VM'} {vm.spec.name} stays"
    await clones.refuse_if_read(db, what, [d.volume for d in vm.spec.disks])
    params = VMDeleteParams(volumes=volumes)
    task = new_task(TaskKind.vm_delete, vm.node, vm.id, user, params)
    await db.commit(with_task(Txn().require_revision(entry.key, entry.revision), task))
    return task
