"""iSCSI exports of ARDFS volumes: an outside host's LUN, with CHAP and an initiator ACL."""

from fastapi import APIRouter, Depends, Request

from heron.api import auth
from heron.api.auth import Principal
from heron.api.context import ApiContext
from heron.configdb import keys
from heron.models.common import Name
from heron.models.iscsi import IscsiExport, IscsiExportCreate, IscsiExportView
from heron.services import iscsi as iscsi_service
from heron.services.errors import NotFound
from heron.services.lookup import find_pool, find_volume

router = APIRouter(tags=["storage"])


def _ctx(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


@router.get("/pools/{name}/iscsi", response_model=list[IscsiExport])
async def list_exports(
    name: Name, request: Request, _: Principal = Depends(auth.pool_viewer)
) -> list[IscsiExport]:
    """The pool's exported volumes: target IQN, CHAP user (never the secret), allowed
    initiators, and the portal once the exporting node serves the target."""
    ctx = _ctx(request)
    await find_pool(ctx.db, name)
    found = [e for e in await iscsi_service.exports(ctx.db) if e.pool == name]
    return sorted(found, key=lambda e: e.volume_name)


@router.get("/pools/{name}/volumes/{ref}/iscsi", response_model=IscsiExport)
async def get_export(
    name: Name, ref: Name, request: Request, _: Principal = Depends(auth.pool_viewer)
) -> IscsiExport:
    ctx = _ctx(request)
    volume = (await find_volume(ctx.db, name, ref)).value
    found = await ctx.db.get(IscsiExport, keys.iscsi_export(volume.id))
    if found is None:
        raise NotFound(f"volume {volume.name} is not exported")
    return found.value


@router.post("/pools/{name}/volumes/{ref}/iscsi", response_model=IscsiExportView, status_code=201)
async def export_volume(
    name: Name,
    ref: Name,
    body: IscsiExportCreate,
    request: Request,
    principal: Principal = Depends(auth.pool_operator),
) -> IscsiExportView:
    """Export the volume as LUN 1 of its own target, from the node that owns it. The reply
    carries the CHAP secret (given or generated): it is never shown again."""
    ctx = _ctx(request)
    request.state.audit_target = f"volume:{name}/{ref}"
    return await iscsi_service.export(ctx.db, ctx.node, name, ref, body, principal.user)


@router.delete("/pools/{name}/volumes/{ref}/iscsi", status_code=204)
async def unexport_volume(
    name: Name, ref: Name, request: Request, _: Principal = Depends(auth.pool_operator)
) -> None:
    ctx = _ctx(request)
    request.state.audit_target = f"volume:{name}/{ref}"
    await iscsi_service.unexport(ctx.db, name, ref)
