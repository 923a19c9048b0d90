"""Virtual machines: create (with their disks), read, change, power actions, delete."""

import time
from functools import partial
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import AfterValidator, BaseModel, Field, model_validator

from heron.api import auth, listing
from heron.api.auth import Principal
from heron.api.cluster import (
    attached,
    find_pool,
    find_vm,
    live_nodes,
    new_placement,
    new_volume_format,
)
from heron.api.context import ApiContext, with_task
from heron.api.errors import Conflict, Invalid
from heron.configdb import ConfigDB, Entry, Txn, keys
from heron.configdb.store import Conflict as StoreConflict
from heron.models.common import NAME_REASON, Name, matching, new_id, string_schema
from heron.models.group import VMGroup
from heron.models.node import Node
from heron.models.storage import Volume, VolumeFormat
from heron.models.task import Task, new_task
from heron.models.vm import (
    VM,
    BootDevice,
    DiskBus,
    DiskSpec,
    HAPolicy,
    Hardware,
    NicSpec,
    PowerState,
    RunState,
    VMSpec,
    VMStatus,
    check_boot_order,
    check_disk_buses,
)
from heron.scheduler.inventory import Inventory, group_of
from heron.scheduler.placement import NoCapacity, affinity_for, choose_node, node_loads

router = APIRouter(tags=["vms"])

Action = Literal["start", "shutdown", "stop", "reboot", "pause", "resume"]


class DiskRequest(BaseModel):
    """A disk: an existing volume, or a new one (empty, or a copy of an image volume)."""

    bus: DiskBus = "virtio"
    volume: str | None = Field(default=None, description="existing volume as pool/name or id")
    pool: Name | None = Field(default=None, description="pool for a new volume")
    size: int | None = Field(default=None, gt=0, le=64 * 2**40, description="bytes")
    source: str | None = Field(default=None, description="image volume to copy, pool/name")
    format: VolumeFormat | None = Field(
        default=None, description="of a new volume: qcow2 by default; raw in rbd and ardfs pools"
    )

    @model_validator(mode="after")
    def _one_kind(self) -> "DiskRequest":
        if self.volume is not None:
            if self.pool or self.size or self.source:
                raise ValueError("give either volume, or pool with size and/or source")
        elif self.pool is None:
            raise ValueError("give volume, or pool with size and/or source")
        elif self.size is None and self.source is None:
            raise ValueError("a new volume needs a size or a source")
        return self


class VMCreate(Hardware):
    name: Name
    disks: list[DiskRequest] = Field(default_factory=list, max_length=16)
    nics: list[NicSpec] = Field(default_factory=list, max_length=8)
    node: Name | None = Field(default=None, description="where to run it; chosen if omitted")
    start: bool = False

    @model_validator(mode="after")
    def _devices(self) -> "VMCreate":
        check_boot_order(self.boot_order, len(self.disks), len(self.nics))
        check_disk_buses([d.bus for d in self.disks], self.machine)
        return self


class VMUpdate(BaseModel):
    """Changes to a VM's hardware, applied at its next start; `revision` guards the write."""

    model_config = {"extra": "forbid"}
    revision: int | None = Field(default=None, description="write only if still at this revision")
    name: Name | None = None
    vcpus: int | None = Field(default=None, ge=1, le=256)
    memory_mib: int | None = Field(default=None, ge=16, le=4 * 1024 * 1024)
    description: str | None = Field(default=None, max_length=1024)
    boot_order: list[BootDevice] | None = Field(default=None, max_length=8)
    ha: HAPolicy | None = None


class ActionRequest(BaseModel):
    model_config = {"extra": "forbid"}
    timeout: float = Field(
        default=60,
        gt=0,
        le=3600,
        description="shutdown: seconds to wait for the guest before forcing it off",
    )


class VMView(BaseModel):
    id: str
    name: str
    node: str
    power: PowerState
    state: RunState | Literal["unknown"]
    spec: VMSpec
    status: VMStatus | None
    revision: int
    created_at: float


class TaskRef(BaseModel):
    task: str
    vm: str | None = None


def _ctx(request: Request) -> ApiContext:
    return request.app.state.ctx


def _view(vm: VM, revision: int, status: VMStatus | None, node_alive: bool) -> VMView:
    # A node that is gone cannot vouch for its VMs: their state is unknown until it is back
    # (the last status it wrote stays visible in `status`).
    # `pending` is the leader's word, not the node's, so it stands without the node.
    # A status counts only if written for the VM's current node (after a failover the old
    # node's last word is not about where the VM runs now).
    known = status is not None and (
        status.state == RunState.pending or (node_alive and status.node == vm.node)
    )
    state: RunState | Literal["unknown"] = status.state if status and known else "unknown"
    return VMView(
        id=vm.id,
        name=vm.spec.name,
        node=vm.node,
        power=vm.power,
        state=state,
        spec=vm.spec,
        status=status,
        revision=revision,
        created_at=vm.created_at,
    )


@router.get("/vms", response_model=list[VMView], responses=listing.PAGED_RESPONSES)
async def list_vms(
    request: Request,
    node: Name | None = Query(None, description="only the VMs assigned to this node"),
    state: RunState | Literal["unknown"] | None = Query(None, description="only in this state"),
    power: PowerState | None = Query(None, description="only with this desired power state"),
    group: Name | None = Query(None, description="only the members of this group"),
    limit: int | None = Query(
        None, ge=1, le=listing.MAX_LIMIT, description="at most this many, by name"
    ),
    cursor: str | None = Query(
        None, alias="continue", description="the X-Continue header of the previous page"
    ),
    _: Principal = Depends(auth.viewer),
) -> Response:
    """Sorted by name; without `limit`, all of them. Served from this node's watch-fed copy
    of the ConfigDB, which may be a few milliseconds behind it."""
    ctx = _ctx(request)
    after = listing.decode_cursor(cursor)
    inventory = await ctx.inventory.ready()
    live = frozenset(inventory.live_nodes())
    version = (inventory.vms.revision, inventory.vm_status.revision, live)
    everything = ctx.vm_views.whole(version, partial(_render_all, ctx, inventory, live))
    chosen = [
        r
        for r in everything
        if (node is None or r.view.node == node)
        and (state is None or r.view.state == state)
        and (power is None or r.view.power == power)
        and (group is None or r.view.spec.group == group)
    ]
    items, next_cursor = listing.page(chosen, lambda r: r.view.name, limit, after)
    return listing.json_list(items, next_cursor)


def _render_all(
    ctx: ApiContext, inventory: Inventory, live: frozenset[str]
) -> list[listing.Rendered[VMView]]:
    """Every VM's view, sorted by name; a VM's JSON is made again only when it changed."""
    entries = sorted(inventory.vms, key=lambda e: e.value.spec.name)
    views = ctx.vm_views
    views.keep_only({e.value.id for e in entries})
    rendered = []
    for entry in entries:
        vm = entry.value
        status = inventory.vm_status.get(vm.id)
        alive = vm.node in live
        rendered.append(
            views.get(
                vm.id,
                (entry.revision, status.revision if status else 0, alive),
                partial(_view, vm, entry.revision, status.value if status else None, alive),
            )
        )
    return rendered


async def _views(db: ConfigDB, entries: list[Entry[VM]]) -> list[VMView]:
    live = set(await live_nodes(db))
    if len(entries) == 1:
        found = await db.get(VMStatus, keys.vm_status(entries[0].value.id))
        statuses = {entries[0].value.id: found.value} if found else {}
    else:
        statuses = {
            e.key.rsplit("/", 1)[1]: e.value for e in await db.list(VMStatus, keys.VM_STATUS)
        }
    return [
        _view(e.value, e.revision, statuses.get(e.value.id), e.value.node in live) for e in entries
    ]


@router.get("/vms/{ref}", response_model=VMView)
async def get_vm(ref: Name, request: Request, _: Principal = Depends(auth.viewer)) -> VMView:
    db = _ctx(request).db
    return (await _views(db, [await find_vm(db, ref)]))[0]


@router.post("/vms", response_model=TaskRef, status_code=202)
async def create_vm(
    body: VMCreate, request: Request, principal: Principal = Depends(auth.operator)
) -> TaskRef:
    """Define a VM and create its disks; a `vm.create` task on its node does the work."""
    ctx = _ctx(request)
    inventory = await ctx.inventory.ready()
    nodes, vms = inventory.live_nodes(), inventory.vms.values()
    vm, txn, task = await _plan_create(ctx, body, nodes, vms, principal.user)
    try:
        revision = await ctx.db.commit(txn)
    except StoreConflict as exc:
        raise Conflict(f"a VM named {body.name!r} or one of its volumes already exists") from exc
    # The next create through this node must count this VM where it was placed.
    await inventory.vms.wait_for(revision)
    request.state.audit_target = vm.id
    return TaskRef(task=task.id, vm=vm.id)


# A Name short enough for the longest suffix ("-1000") to leave a valid name.
_PREFIX_PATTERN = r"^[a-z0-9]([a-z0-9._-]{0,56}[a-z0-9])?$"
NamePrefix = Annotated[
    str,
    AfterValidator(matching(_PREFIX_PATTERN, NAME_REASON.replace("1-63", "1-58"))),
    string_schema(_PREFIX_PATTERN, 1, 58),
]


class BatchCreate(VMCreate):
    """`count` VMs named `<name>-001`, `<name>-002`, ... from one template (VDI style)."""

    name: NamePrefix = Field(description="prefix of the names")
    count: int = Field(ge=1, le=1000)
    dry_run: bool = Field(default=False, description="only say where each VM would go")


class BatchItem(BaseModel):
    name: str
    node: str
    vm: str | None = None
    task: str | None = None


class BatchReply(BaseModel):
    dry_run: bool
    vms: list[BatchItem]


@router.post("/vms/batch", response_model=BatchReply, status_code=202)
async def create_vms(
    body: BatchCreate, request: Request, principal: Principal = Depends(auth.operator)
) -> BatchReply:
    """Mass deployment: place every VM first (each one counting against the next), refuse
    all if any does not fit, then create them; with `dry_run` nothing is written."""
    ctx = _ctx(request)
    inventory = await ctx.inventory.ready()
    nodes, vms = inventory.live_nodes(), inventory.vms.values()
    width = max(3, len(str(body.count)))
    plans = []
    for i in range(1, body.count + 1):
        one = VMCreate(
            **body.model_dump(exclude={"name", "count", "dry_run"}),
            name=f"{body.name}-{i:0{width}}",
        )
        vm, txn, task = await _plan_create(ctx, one, nodes, vms, principal.user)
        vms.append(vm)
        plans.append((vm, txn, task))
    items = [BatchItem(name=vm.spec.name, node=vm.node) for vm, _, _ in plans]
    if not body.dry_run:
        for item, (vm, txn, task) in zip(items, plans, strict=True):
            try:
                revision = await ctx.db.commit(txn)
            except StoreConflict as exc:
                raise Conflict(f"{vm.spec.name} was created meanwhile; stopped there") from exc
            item.vm, item.task = vm.id, task.id
        await inventory.vms.wait_for(revision)
    return BatchReply(dry_run=body.dry_run, vms=items)


async def _plan_create(
    ctx: ApiContext, body: VMCreate, nodes: dict[str, Node], vms: list[VM], user: str
) -> tuple[VM, Txn, Task]:
    """Check a create request and place the VM; the transaction that makes it, unwritten."""
    db = ctx.db
    if await db.get_raw(keys.vm_name(body.name)) is not None or any(
        v.spec.name == body.name for v in vms
    ):
        raise Conflict(f"a VM named {body.name!r} already exists")
    in_use = attached(vms)
    now = time.time()
    vm_id = new_id()
    disks: list[DiskSpec] = []
    new_volumes: list[tuple[Volume, str | None]] = []
    pinned: set[str] | None = None  # nodes the VM may run on, narrowed by local volumes
    if body.node is not None:
        if body.node not in nodes:
            raise Invalid("body.node", f"no live node {body.node!r}")
        if nodes[body.node].maintenance:
            raise Conflict(f"node {body.node} is in maintenance")
        pinned = {body.node}
    group = None
    if body.group is not None:
        found = await db.get(VMGroup, keys.group(body.group))
        if found is None:
            raise Invalid("body.group", f"no group {body.group!r}")
        group = found.value

    def pin(node: str | None, field: str) -> None:
        nonlocal pinned
        if node is None:
            return
        if pinned is not None and node not in pinned:
            raise Invalid(
                field, f"is on node {node}, but the VM must run on {', '.join(sorted(pinned))}"
            )
        pinned = {node}

    for index, disk in enumerate(body.disks):
        field = f"body.disks.{index}"
        if disk.volume is not None:
            volume = await _volume_by_ref(ctx, disk.volume, f"{field}.volume")
            if volume.id in in_use:
                raise Conflict(f"volume {disk.volume} is used by VM {in_use[volume.id]}")
            pin(volume.node, f"{field}.volume")
            disks.append(DiskSpec(bus=disk.bus, volume=volume.id))
            continue
        assert disk.pool is not None
        pool = (await find_pool(db, disk.pool, f"{field}.pool")).value
        fmt = new_volume_format(pool, disk.format, f"{field}.pool", f"{field}.format")
        source_id = None
        size = disk.size or 0
        if disk.source is not None:
            source = await _volume_by_ref(ctx, disk.source, f"{field}.source")
            if source.state != "ready":
                raise Invalid(f"{field}.source", f"volume is {source.state}")
            pin(source.node, f"{field}.source")
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
    try:
        node = choose_node(
            node_loads(nodes, vms),
            body.memory_mib,
            body.vcpus,
            pinned,
            affinity_for(vm_id, group, vms),
        )
    except NoCapacity as exc:
        raise Conflict(str(exc)) from exc
    for volume, _ in new_volumes:
        pool = (await find_pool(db, volume.pool)).value
        if not pool.shared:
            volume.node = node
    spec = VMSpec(
        **body.model_dump(include=set(Hardware.model_fields)),
        name=body.name,
        disks=disks,
        nics=body.nics,
    )
    vm = VM(
        id=vm_id,
        spec=spec,
        node=node,
        power=PowerState.running if body.start else PowerState.stopped,
        created_at=now,
    )
    task = new_task(
        "vm.create",
        node,
        vm_id,
        user,
        {"volumes": [{"id": v.id, "source": s} for v, s in new_volumes]},
    )
    txn = Txn().require_absent(keys.vm_name(body.name)).put(keys.vm_name(body.name), vm_id)
    txn.put(keys.vm(vm_id), vm)
    for volume, _ in new_volumes:
        txn.require_absent(keys.volume_name(volume.pool, volume.name))
        txn.put(keys.volume_name(volume.pool, volume.name), volume.id)
        txn.put(keys.volume(volume.id), volume)
    return vm, with_task(txn, task), task


async def _volume_by_ref(ctx: ApiContext, ref: str, field: str) -> Volume:
    """A volume named as pool/name, or by id."""
    db = ctx.db
    if "/" in ref:
        pool, _, name = ref.partition("/")
        index = await db.get_raw(keys.volume_name(pool, name))
        entry = await db.get(Volume, keys.volume(index[0].decode())) if index else None
    else:
        entry = await db.get(Volume, keys.volume(ref))
    if entry is None:
        raise Invalid(field, f"no volume {ref!r}")
    return entry.value


@router.patch("/vms/{ref}", response_model=VMView)
async def update_vm(
    ref: Name, body: VMUpdate, request: Request, _: Principal = Depends(auth.operator)
) -> VMView:
    db = _ctx(request).db
    entry = await find_vm(db, ref)
    if body.revision is not None and body.revision != entry.revision:
        raise Conflict(
            f"VM {ref} changed since revision {body.revision} (now {entry.revision}); read it again"
        )
    vm = entry.value.model_copy(deep=True)
    changes = body.model_dump(exclude_none=True, exclude={"revision"})
    try:
        spec = VMSpec.model_validate({**vm.spec.model_dump(), **changes})
    except ValueError as exc:
        raise Invalid("body", str(exc).splitlines()[-1] if str(exc) else "invalid") from exc
    vm.spec = spec
    txn = Txn().require_revision(entry.key, entry.revision).put(entry.key, vm)
    if spec.name != entry.value.spec.name:
        txn.require_absent(keys.vm_name(spec.name)).put(keys.vm_name(spec.name), vm.id)
        txn.delete(keys.vm_name(entry.value.spec.name))
    try:
        revision = await db.commit(txn)
    except StoreConflict as exc:
        raise Conflict(f"VM {ref} was changed by someone else, or the name is taken") from exc
    request.state.audit_target = vm.id
    return (await _views(db, [Entry(entry.key, vm, revision)]))[0]


_DESIRED: dict[str, PowerState | None] = {
    "start": PowerState.running,
    "resume": PowerState.running,
    "pause": PowerState.paused,
    "stop": PowerState.stopped,
    "shutdown": PowerState.stopped,
    "reboot": None,
}


class MigrateRequest(BaseModel):
    model_config = {"extra": "forbid"}
    target: Name | None = Field(default=None, description="node to move to; chosen if omitted")
    max_downtime_ms: int = Field(
        default=300, ge=1, le=60_000, description="longest pause of the guest QEMU may take"
    )
    auto_converge: bool = Field(
        default=True, description="slow the guest's vCPUs down if it dirties memory too fast"
    )
    max_bandwidth_mib: int = Field(
        default=1024, ge=1, le=100_000, description="cap on the copy, MiB/s (QEMU's own: 128)"
    )


@router.post("/vms/{ref}/actions/migrate", response_model=TaskRef, status_code=202)
async def migrate_vm(
    ref: Name,
    request: Request,
    body: MigrateRequest | None = None,
    principal: Principal = Depends(auth.operator),
) -> TaskRef:
    """Live-migrate a running VM to another node; disks on local storage are copied along."""
    db = _ctx(request).db
    body = body or MigrateRequest()
    entry = await find_vm(db, ref)
    vm = entry.value
    status = await db.get(VMStatus, keys.vm_status(vm.id))
    state = status.value.state if status else None
    if vm.power == PowerState.stopped or state not in (RunState.running, RunState.paused):
        raise Conflict(f"VM {vm.spec.name} is not running; start it where you want it instead")
    if await db.get_raw(keys.migration(vm.id)) is not None:
        raise Conflict(f"VM {vm.spec.name} is already migrating")
    nodes = await live_nodes(db)
    if vm.node not in nodes:
        raise Conflict(f"the VM's node {vm.node} is not online")
    vms = [e.value for e in await db.list(VM, keys.VMS) if e.value.id != vm.id]
    rule = affinity_for(vm.id, await group_of(db, vm), vms)
    if body.target is not None:
        if body.target not in nodes:
            raise Invalid("body.target", f"no live node {body.target!r}")
        if body.target == vm.node:
            raise Invalid("body.target", f"the VM already runs on {vm.node}")
        if nodes[body.target].maintenance:
            raise Conflict(f"node {body.target} is in maintenance")
        if rule is not None and not rule.allows(body.target):
            raise Conflict(f"group {rule.group}'s {rule.placement} rule forbids {body.target}")
        target = body.target
    else:
        others = {n for n in nodes if n != vm.node}
        try:
            target = choose_node(
                node_loads(nodes, vms), vm.spec.memory_mib, vm.spec.vcpus, others, rule
            )
        except NoCapacity as exc:
            raise Conflict(str(exc)) from exc
    params = {"target": target, **body.model_dump(exclude={"target"})}
    task = new_task("vm.migrate", vm.node, vm.id, principal.user, params)
    await db.commit(with_task(Txn().require_revision(entry.key, entry.revision), task))
    request.state.audit_target = vm.id
    return TaskRef(task=task.id, vm=vm.id)


@router.post("/vms/{ref}/actions/{action}", response_model=TaskRef, status_code=202)
async def vm_action(
    ref: Name,
    action: Action,
    request: Request,
    body: ActionRequest | None = None,
    principal: Principal = Depends(auth.operator),
) -> TaskRef:
    """Power actions. The desired power state is written with the task in one transaction,
    so a node that restarts mid-way still knows what the VM should be doing."""
    db = _ctx(request).db
    entry = await find_vm(db, ref)
    vm = entry.value.model_copy(deep=True)
    params = {"timeout": (body or ActionRequest()).timeout, "graceful": action == "shutdown"}
    task = new_task(f"vm.{action}", vm.node, vm.id, principal.user, params)
    txn = Txn().require_revision(entry.key, entry.revision)
    desired = _DESIRED[action]
    if desired is not None:
        if action == "resume" and vm.power != PowerState.paused:
            raise Conflict(f"VM {vm.spec.name} is not paused")
        vm.power = desired
        vm.generation += 1
        txn.put(entry.key, vm)
    elif vm.power != PowerState.running:
        raise Conflict(f"VM {vm.spec.name} is not running")
    await db.commit(with_task(txn, task))
    request.state.audit_target = vm.id
    return TaskRef(task=task.id, vm=vm.id)


@router.delete("/vms/{ref}", response_model=TaskRef, status_code=202)
async def delete_vm(
    ref: Name,
    request: Request,
    volumes: bool = False,
    principal: Principal = Depends(auth.operator),
) -> TaskRef:
    """Delete a VM (stopping it first); with `volumes=true` its volumes go too."""
    db = _ctx(request).db
    entry = await find_vm(db, ref)
    vm = entry.value
    running = [
        t
        for t in await db.list(Task, keys.TASKS)
        if t.value.target == vm.id and t.value.kind == "vm.delete" and not t.value.state.finished
    ]
    if running:
        return TaskRef(task=running[0].value.id, vm=vm.id)
    task = new_task("vm.delete", vm.node, vm.id, principal.user, {"volumes": volumes})
    await db.commit(with_task(Txn().require_revision(entry.key, entry.revision), task))
    request.state.audit_target = vm.id
    return TaskRef(task=task.id, vm=vm.id)
