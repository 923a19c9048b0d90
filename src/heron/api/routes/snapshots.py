"""Snapshots of a VM: list (a tree), take, rename, revert and delete them."""

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from heron.api import auth
from heron.api.auth import Principal
from heron.configdb import Entry
from heron.models.common import Name
from heron.models.snapshot import Snapshot, SnapshotCreate, SnapshotUpdate
from heron.services import snapshots as service

router = APIRouter(tags=["snapshots"])


class SnapshotView(Snapshot):
    current: bool = Field(description="the VM's current snapshot: the parent of its next one")
    revision: int


class SnapshotList(BaseModel):
    vm: str
    current: str | None = Field(description="id of the VM's current snapshot")
    snapshots: list[SnapshotView] = Field(description="oldest first; `parent` makes the tree")


class SnapshotTask(BaseModel):
    task: str
    vm: str
    snapshot: str


def _view(entry: Entry[Snapshot], current: str | None) -> SnapshotView:
    return SnapshotView(
        **entry.value.model_dump(), current=entry.value.id == current, revision=entry.revision
    )


@router.get("/vms/{ref}/snapshots", response_model=SnapshotList)
async def list_snapshots(
    ref: Name, request: Request, _: Principal = Depends(auth.vm_viewer)
) -> SnapshotList:
    found = await service.list_snapshots(request.app.state.ctx.db, ref)
    return SnapshotList(
        vm=found.vm.id,
        current=found.current,
        snapshots=[_view(e, found.current) for e in found.snapshots],
    )


@router.post("/vms/{ref}/snapshots", response_model=SnapshotTask, status_code=202)
async def create_snapshot(
    ref: Name,
    body: SnapshotCreate,
    request: Request,
    principal: Principal = Depends(auth.vm_operator),
) -> SnapshotTask:
    """Take a snapshot of every disk at one instant (and of the memory, with `memory`); a
    `snapshot.create` task on the VM's node does it."""
    snapshot, task = await service.create(request.app.state.ctx.db, ref, body, principal.user)
    request.state.audit_target = snapshot.vm
    return SnapshotTask(task=task.id, vm=snapshot.vm, snapshot=snapshot.id)


@router.get("/vms/{ref}/snapshots/{snapshot}", response_model=SnapshotView)
async def get_snapshot(
    ref: Name, snapshot: Name, request: Request, _: Principal = Depends(auth.vm_viewer)
) -> SnapshotView:
    db = request.app.state.ctx.db
    found = await service.list_snapshots(db, ref)
    entry = await service.find_snapshot(db, found.vm, snapshot)
    return _view(entry, found.current)


@router.patch("/vms/{ref}/snapshots/{snapshot}", response_model=SnapshotView)
async def update_snapshot(
    ref: Name,
    snapshot: Name,
    body: SnapshotUpdate,
    request: Request,
    _: Principal = Depends(auth.vm_operator),
) -> SnapshotView:
    """Rename it or change its description."""
    db = request.app.state.ctx.db
    entry = await service.update(db, ref, snapshot, body)
    request.state.audit_target = entry.value.vm
    found = await service.list_snapshots(db, ref)
    return _view(entry, found.current)


@router.post("/vms/{ref}/snapshots/{snapshot}/revert", response_model=SnapshotTask, status_code=202)
async def revert_snapshot(
    ref: Name, snapshot: Name, request: Request, principal: Principal = Depends(auth.vm_operator)
) -> SnapshotTask:
    """Bring the VM back to the snapshot. A memory snapshot of a running VM: it runs on from
    the snapshot's instant. Otherwise its disks are reverted with QEMU stopped, and the VM
    started again if it was running (the guest boots from the reverted disks)."""
    task = await service.revert(request.app.state.ctx.db, ref, snapshot, principal.user)
    request.state.audit_target = task.target
    return SnapshotTask(task=task.id, vm=task.target, snapshot=str(task.params["snapshot"]))


@router.delete("/vms/{ref}/snapshots/{snapshot}", response_model=SnapshotTask, status_code=202)
async def delete_snapshot(
    ref: Name, snapshot: Name, request: Request, principal: Principal = Depends(auth.vm_operator)
) -> SnapshotTask:
    """Delete it, wherever it is in the tree, the VM running or not; its children follow its
    parent."""
    task = await service.delete(request.app.state.ctx.db, ref, snapshot, principal.user)
    request.state.audit_target = task.target
    return SnapshotTask(task=task.id, vm=task.target, snapshot=str(task.params["snapshot"]))
