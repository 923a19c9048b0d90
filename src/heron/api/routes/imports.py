"""V2V: import sources (folders, NFS datastores), their scans, and imports of their VMs.
Admins only change them: a source reads node paths and mounts outside storage."""

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from heron.api import auth
from heron.api.auth import Principal
from heron.configdb import keys
from heron.models.common import Name
from heron.models.imports import (
    ImportedVm,
    ImportRequest,
    ImportSource,
    ImportSourceCreate,
    ImportSourceView,
    ScanResult,
)
from heron.services import imports as import_service

router = APIRouter(tags=["imports"])


class ScanRef(BaseModel):
    task: str
    node: str


class ImportReply(BaseModel):
    dry_run: bool
    vms: list[ImportedVm]


@router.get("/imports/sources", response_model=list[ImportSourceView])
async def list_sources(
    request: Request, _: Principal = Depends(auth.viewer)
) -> list[ImportSourceView]:
    """The sources; a vsphere source's password is shown only as whether one is set."""
    db = request.app.state.ctx.db
    return [ImportSourceView.of(e.value) for e in await db.list(ImportSource, keys.IMPORT_SOURCES)]


@router.post("/imports/sources", response_model=ImportSourceView, status_code=201)
async def create_source(
    body: ImportSourceCreate, request: Request, principal: Principal = Depends(auth.admin)
) -> ImportSourceView:
    """A place to import VMs from: a folder on a node, an NFS export (mounted read-only by
    the node that reads it), or an ESXi host or vCenter (`vsphere`) read over its API. A
    vsphere source's certificate is pinned: by the `fingerprint` given, which must be the one
    the server shows, or else as the server shows it now (compare the reply's `fingerprint`
    with the server's). Its password is write-only."""
    ctx = request.app.state.ctx
    request.state.audit_target = body.name
    source = await import_service.create_source(ctx.db, ctx.inventory, body, principal.user)
    return ImportSourceView.of(source)


@router.delete("/imports/sources/{name}", status_code=204)
async def delete_source(name: Name, request: Request, _: Principal = Depends(auth.admin)) -> None:
    """Forget a source and its scan (refused while its scans or imports run)."""
    request.state.audit_target = name
    await import_service.delete_source(request.app.state.ctx.db, name)


@router.post("/imports/sources/{name}/scan", response_model=ScanRef, status_code=202)
async def scan_source(
    name: Name, request: Request, principal: Principal = Depends(auth.admin)
) -> ScanRef:
    """Read the source again: a `v2v.scan` task, whose result is the source's scan."""
    ctx = request.app.state.ctx
    request.state.audit_target = name
    task = await import_service.scan(ctx.db, ctx.inventory, name, principal.user)
    return ScanRef(task=task.id, node=task.node)


@router.get("/imports/sources/{name}/scan", response_model=ScanResult)
async def last_scan(name: Name, request: Request, _: Principal = Depends(auth.admin)) -> ScanResult:
    """The VMs the last scan found, each with what stops or changes its import."""
    return await import_service.last_scan(request.app.state.ctx.db, name)


@router.post("/imports", response_model=ImportReply, status_code=202)
async def import_vms(
    body: ImportRequest, request: Request, principal: Principal = Depends(auth.admin)
) -> ImportReply:
    """Import scanned VMs into a pool: each a `v2v.import` task, queued on its node (at most
    `imports.parallel` of the cluster settings run at once there). The whole request is
    checked first: one VM that cannot be imported refuses the request, nothing is made."""
    ctx = request.app.state.ctx
    request.state.audit_target = body.source
    _, views = await import_service.plan_imports(ctx.db, ctx.inventory, body, principal.user)
    return ImportReply(dry_run=body.dry_run, vms=views)
