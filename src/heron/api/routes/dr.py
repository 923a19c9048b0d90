"""Disaster recovery (issue 19, inside one cluster for now): the inventory of VMs and their
protection, protect/unprotect, the points of a VM, and restoring a point as a new VM."""

from dataclasses import asdict

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from heron.api import auth
from heron.api.auth import Principal
from heron.models.common import Name
from heron.models.dr import DRPoint, ProtectionPolicy, ProtectRequest, RestoreRequest
from heron.services import dr as service

router = APIRouter(tags=["dr"])


class DRVM(BaseModel):
    vm: str = Field(description="id of the VM")
    name: str
    node: str | None = Field(description="its node; none: the VM is gone, its points remain")
    protected: bool
    interval_seconds: int | None = None
    retention: int | None = Field(default=None, description="newest points kept")
    hourly: int | None = Field(default=None, description="hours whose newest point is kept")
    daily: int | None = Field(default=None, description="days whose newest point is kept")
    monthly: int | None = Field(default=None, description="months whose newest point is kept")
    points: int = Field(description="how many points its store holds")
    last_point: str | None = Field(default=None, description="id of the newest point")
    last_point_at: float | None = Field(default=None, description="the newest point's instant")
    rpo_seconds: float | None = Field(
        default=None, description="RPO achieved: now less the newest point's instant (protected)"
    )
    last_attempt: float | None = Field(default=None, description="when the last round started")
    last_error: str | None = Field(default=None, description="why the last round failed")
    last_kind: str | None = Field(default=None, description="full, incremental or resync")
    last_bytes_read: int | None = None
    last_bytes_written: int | None = Field(
        default=None, description="changed bytes the last round added to the store"
    )
    last_chunks_sent: int | None = None
    store_node: str | None = Field(default=None, description="the node whose store holds them")


class DRVMList(BaseModel):
    vms: list[DRVM]


class ProtectionView(BaseModel):
    vm: str
    policy: ProtectionPolicy
    since: float
    user: str


class PointList(BaseModel):
    vm: str
    name: str
    node: str | None = Field(description="the node whose store holds the points")
    points: list[DRPoint] = Field(description="oldest first")


class RestoreTask(BaseModel):
    task: str
    vm: str = Field(description="id of the new VM")
    point: str


@router.get("/dr/vms", response_model=DRVMList)
async def list_dr_vms(request: Request, _: Principal = Depends(auth.viewer)) -> DRVMList:
    """Every VM with its protection state, policy, newest point, RPO achieved and its last
    round's numbers or error; then VMs deleted whose points remain."""
    rows = await service.inventory(request.app.state.ctx.db)
    return DRVMList(vms=[DRVM(**asdict(row)) for row in rows])


@router.put("/dr/vms/{ref}/protection", response_model=ProtectionView)
async def protect_vm(
    ref: Name,
    body: ProtectRequest,
    request: Request,
    principal: Principal = Depends(auth.vm_operator),
) -> ProtectionView:
    """Protect the VM (or change its policy): its node runs a replication round each
    interval. Refused (409) for a VM a disk of which cannot be replicated (not qcow2)."""
    found = await service.protect(request.app.state.ctx.db, ref, body, principal.user)
    request.state.audit_target = found.vm
    return ProtectionView(**found.model_dump())


@router.delete("/dr/vms/{ref}/protection", status_code=204)
async def unprotect_vm(
    ref: Name, request: Request, _: Principal = Depends(auth.vm_operator)
) -> None:
    """No more rounds; its points remain, to be restored."""
    vm = await service.unprotect(request.app.state.ctx.db, ref)
    request.state.audit_target = vm.id


@router.get("/dr/vms/{ref}/points", response_model=PointList)
async def list_points(
    ref: Name, request: Request, _: Principal = Depends(auth.viewer)
) -> PointList:
    """The VM's points (by its name or id; a VM deleted: by its id)."""
    found = await service.points(request.app.state.ctx.db, ref)
    return PointList(vm=found.vm, name=found.name, node=found.node, points=found.points)


@router.post("/dr/vms/{ref}/points/{point}/restore", response_model=RestoreTask, status_code=202)
async def restore_point(
    ref: Name,
    point: str,
    body: RestoreRequest,
    request: Request,
    principal: Principal = Depends(auth.operator),
) -> RestoreTask:
    """Restore the point as a new VM (stopped, on the node whose store holds the point, its
    disks in `pool`); a `dr.restore` task does it."""
    ctx = request.app.state.ctx
    plan = await service.restore(ctx.db, ctx.inventory, ref, point, body, principal.user)
    request.state.audit_target = plan.vm.id
    return RestoreTask(task=plan.task.id, vm=plan.vm.id, point=point)
