"""Virtual machines: create (with their disks), read, change, power actions, delete."""

from functools import partial
from typing import Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, Field

from heron.api import auth, listing
from heron.api.auth import Principal
from heron.api.context import ApiContext
from heron.configdb import ConfigDB, Entry, keys
from heron.models.common import Name
from heron.models.hotplug import pending_changes
from heron.models.migration import MigrateRequest, Migration
from heron.models.vm import (
    VM,
    BatchCreate,
    DiskAttach,
    DiskUpdate,
    NicAttach,
    NicUpdate,
    PowerState,
    RunState,
    VMCreate,
    VMSpec,
    VMStatus,
    VMUpdate,
)
from heron.scheduler.inventory import Inventory
from heron.services import vms as vm_service
from heron.services.lookup import find_vm, live_nodes
from heron.services.vms import Action

router = APIRouter(tags=["vms"])


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
    pending: list[str] = Field(
        description="hardware fields changed since its QEMU started: they apply at the next start"
    )
    revision: int
    created_at: float
    template: bool = Field(default=False, description="a template: it never starts")
    migration: Migration | None = Field(
        default=None,
        description="its live migration under way, or one its target has not closed yet "
        "(no other move of the VM begins while it stands)",
    )
    task: str | None = Field(
        default=None,
        description="in the reply to a change: the task giving the running VM what it can "
        "take at once (null: nothing, or all at its next start)",
    )


class NicChangeView(BaseModel):
    vm: VMView
    task: str | None = Field(
        description="the task plugging the change into the running VM; null: at its next start"
    )


class TaskRef(BaseModel):
    task: str
    vm: str | None = None


def _ctx(request: Request) -> ApiContext:
    return request.app.state.ctx


def _view(
    vm: VM,
    revision: int,
    status: VMStatus | None,
    node_alive: bool,
    migration: Migration | None = None,
) -> VMView:
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
        pending=pending_changes(vm.spec, status.hardware if status and known else None),
        revision=revision,
        created_at=vm.created_at,
        template=vm.template,
        migration=migration,
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
    principal: Principal = Depends(auth.authenticate),
) -> Response:
    """Sorted by name; without `limit`, all of them. Served from this node's watch-fed copy
    of the ConfigDB, which may be a few milliseconds behind it. Only the VMs the caller may
    see: all with a cluster-wide role, else those of the groups granted to it."""
    ctx = _ctx(request)
    groups = await auth.reachable_groups(ctx.db, principal)
    after = listing.decode_cursor(cursor)
    inventory = await ctx.inventory.ready()
    live = frozenset(inventory.live_nodes())
    version = (
        inventory.vms.revision,
        inventory.vm_status.revision,
        inventory.migrations.revision,
        live,
    )
    everything = ctx.vm_views.whole(version, partial(_render_all, ctx, inventory, live))
    chosen = [
        r
        for r in everything
        if (node is None or r.view.node == node)
        and (state is None or r.view.state == state)
        and (power is None or r.view.power == power)
        and (group is None or r.view.spec.group == group)
        and (groups is None or r.view.spec.group in groups)
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
        moving = inventory.migrations.get(vm.id)
        alive = vm.node in live
        rendered.append(
            views.get(
                vm.id,
                (
                    entry.revision,
                    status.revision if status else 0,
                    moving.revision if moving else 0,
                    alive,
                ),
                partial(
                    _view,
                    vm,
                    entry.revision,
                    status.value if status else None,
                    alive,
                    moving.value if moving else None,
                ),
            )
        )
    return rendered


async def one_view(db: ConfigDB, entry: Entry[VM]) -> VMView:
    """One VM's view, read from etcd (not the caches): right after a change, it shows it."""
    found = await db.get(VMStatus, keys.vm_status(entry.value.id))
    alive = entry.value.node in await live_nodes(db)
    moving = await db.get(Migration, keys.migration(entry.value.id))
    return _view(
        entry.value,
        entry.revision,
        found.value if found else None,
        alive,
        moving.value if moving else None,
    )


@router.get("/vms/{ref}", response_model=VMView)
async def get_vm(ref: Name, request: Request, _: Principal = Depends(auth.vm_viewer)) -> VMView:
    db = _ctx(request).db
    return await one_view(db, await find_vm(db, ref))


@router.post("/vms", response_model=TaskRef, status_code=202)
async def create_vm(
    body: VMCreate, request: Request, principal: Principal = Depends(auth.signed_in)
) -> TaskRef:
    """Define a VM and create its disks; a `vm.create` task on its node does the work.
    Operators of a group (not cluster-wide) create VMs in that group only."""
    ctx = _ctx(request)
    await auth.may_create_vms(ctx.db, principal, body)
    plan = await vm_service.create(ctx.db, ctx.inventory, body, principal.user)
    request.state.audit_target = plan.vm.id
    return TaskRef(task=plan.task.id, vm=plan.vm.id)


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
    body: BatchCreate, request: Request, principal: Principal = Depends(auth.signed_in)
) -> BatchReply:
    """Mass deployment: place every VM first (each one counting against the next), refuse
    all if any does not fit, then create them; with `dry_run` nothing is written."""
    ctx = _ctx(request)
    await auth.may_create_vms(ctx.db, principal, body)
    plans = await vm_service.create_batch(ctx.db, ctx.inventory, body, principal.user)
    made = not body.dry_run
    items = [
        BatchItem(
            name=p.vm.spec.name,
            node=p.vm.node,
            vm=p.vm.id if made else None,
            task=p.task.id if made else None,
        )
        for p in plans
    ]
    return BatchReply(dry_run=body.dry_run, vms=items)


@router.patch("/vms/{ref}", response_model=VMView)
async def update_vm(
    ref: Name, body: VMUpdate, request: Request, principal: Principal = Depends(auth.vm_operator)
) -> VMView:
    """Change the VM: a running VM (layout 3) gets more vCPUs and memory up to its maxima,
    and its CPU and memory limits, at once by the `task`; the rest is `pending` until its
    next start."""
    db = _ctx(request).db
    if "group" in body.model_fields_set:  # into another group: operating that one too
        await auth.may_use_group(db, principal, body.group)
    change = await vm_service.update(db, ref, body, principal.user)
    return await _hardware_view(db, request, change)


@router.post("/vms/{ref}/disks", response_model=VMView, status_code=201)
async def attach_disk(
    ref: Name, body: DiskAttach, request: Request, principal: Principal = Depends(auth.vm_operator)
) -> VMView:
    """Give the VM an existing volume as its next disk: a running VM (layout 3, virtio) gets
    it plugged in by the `task`; otherwise at its next start (listed in `pending` until then)."""
    db = _ctx(request).db
    await auth.may_use_volumes(db, principal, [body.volume])
    change = await vm_service.attach_disk(db, ref, body, principal.user)
    return await _hardware_view(db, request, change)


@router.patch("/vms/{ref}/disks/{index}", response_model=VMView)
async def update_disk(
    ref: Name,
    body: DiskUpdate,
    index: int = Path(ge=0, le=15, description="the disk's place: 0 for disk0"),
    *,
    request: Request,
    principal: Principal = Depends(auth.vm_operator),
) -> VMView:
    """Set a disk's I/O limits (IOPS, bandwidth, bursts); a running VM gets them at once."""
    db = _ctx(request).db
    change = await vm_service.update_disk(db, ref, index, body, principal.user)
    return await _hardware_view(db, request, change)


@router.delete("/vms/{ref}/disks/{index}", response_model=VMView)
async def detach_disk(
    ref: Name,
    index: int = Path(ge=0, le=15, description="the disk's place: 0 for disk0"),
    *,
    request: Request,
    principal: Principal = Depends(auth.vm_operator),
) -> VMView:
    """Take a disk away; its volume stays in its pool. A running VM gives up only its last
    disk, one plugged in while it ran (the `task` unplugs it); others need it switched off."""
    db = _ctx(request).db
    change = await vm_service.detach_disk(db, ref, index, principal.user)
    return await _hardware_view(db, request, change)


async def _hardware_view(
    db: ConfigDB, request: Request, change: vm_service.HardwareChange
) -> VMView:
    request.state.audit_target = change.vm.value.id
    view = await one_view(db, change.vm)
    return view.model_copy(update={"task": change.task.id if change.task else None})


@router.post("/vms/{ref}/nics", response_model=NicChangeView, status_code=201)
async def attach_nic(
    ref: Name, body: NicAttach, request: Request, principal: Principal = Depends(auth.vm_operator)
) -> NicChangeView:
    """Give the VM a NIC (its MAC and address from the cluster); a running VM gets it plugged
    in by a task on its node."""
    db = _ctx(request).db
    change = await vm_service.attach_nic(db, ref, body, principal.user)
    return await _nic_view(db, request, change)


@router.patch("/vms/{ref}/nics/{index}", response_model=NicChangeView)
async def update_nic(
    ref: Name,
    body: NicUpdate,
    index: int = Path(ge=0, le=7, description="the NIC's place: 0 for the first"),
    *,
    request: Request,
    principal: Principal = Depends(auth.vm_operator),
) -> NicChangeView:
    """Move a NIC to another network, change its address, or plug/pull its cable; a running
    VM gets the change at once."""
    db = _ctx(request).db
    change = await vm_service.update_nic(db, ref, index, body, principal.user)
    return await _nic_view(db, request, change)


@router.delete("/vms/{ref}/nics/{index}", response_model=NicChangeView)
async def detach_nic(
    ref: Name,
    index: int = Path(ge=0, le=7, description="the NIC's place: 0 for the first"),
    *,
    request: Request,
    principal: Principal = Depends(auth.vm_operator),
) -> NicChangeView:
    """Take a NIC away (out of the running guest too); its MAC and address are free again."""
    db = _ctx(request).db
    change = await vm_service.detach_nic(db, ref, index, principal.user)
    return await _nic_view(db, request, change)


async def _nic_view(db: ConfigDB, request: Request, change: vm_service.NicChange) -> NicChangeView:
    request.state.audit_target = change.vm.value.id
    view = await one_view(db, change.vm)
    return NicChangeView(vm=view, task=change.task.id if change.task else None)


@router.post("/vms/{ref}/actions/migrate", response_model=TaskRef, status_code=202)
async def migrate_vm(
    ref: Name,
    request: Request,
    body: MigrateRequest | None = None,
    principal: Principal = Depends(auth.vm_operator),
) -> TaskRef:
    """Live-migrate a running VM to another node; disks on local storage are copied along."""
    ctx = _ctx(request)
    task = await vm_service.migrate(
        ctx.db, ref, body or MigrateRequest(), principal.user, ctx.audit
    )
    request.state.audit_target = task.target
    return TaskRef(task=task.id, vm=task.target)


@router.post("/vms/{ref}/actions/{action}", response_model=TaskRef, status_code=202)
async def vm_action(
    ref: Name,
    action: Action,
    request: Request,
    body: ActionRequest | None = None,
    principal: Principal = Depends(auth.vm_operator),
) -> TaskRef:
    """Power actions. The desired power state is written with the task in one transaction,
    so a node that restarts mid-way still knows what the VM should be doing."""
    timeout = (body or ActionRequest()).timeout
    task = await vm_service.power(_ctx(request).db, ref, action, timeout, principal.user)
    request.state.audit_target = task.target
    return TaskRef(task=task.id, vm=task.target)


@router.delete("/vms/{ref}", response_model=TaskRef, status_code=202)
async def delete_vm(
    ref: Name,
    request: Request,
    volumes: bool = False,
    principal: Principal = Depends(auth.vm_operator),
) -> TaskRef:
    """Delete a VM (stopping it first); with `volumes=true` its volumes go too."""
    task = await vm_service.delete(_ctx(request).db, ref, volumes, principal.user)
    request.state.audit_target = task.target
    return TaskRef(task=task.id, vm=task.target)
