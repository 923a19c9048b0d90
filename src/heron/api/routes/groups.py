"""VM groups: placement rules (affinity, anti-affinity) for sets of VMs."""

from fastapi import APIRouter, Depends, Request

from heron.api import auth
from heron.api.auth import Principal
from heron.models.common import Name
from heron.models.group import GroupCreate, GroupUpdate, VMGroup
from heron.services import groups as group_service

router = APIRouter(tags=["groups"])


@router.get("/groups", response_model=list[VMGroup])
async def list_groups(request: Request, _: Principal = Depends(auth.viewer)) -> list[VMGroup]:
    return await group_service.list_all(request.app.state.ctx.db)


@router.post("/groups", response_model=VMGroup, status_code=201)
async def create_group(
    body: GroupCreate, request: Request, _: Principal = Depends(auth.operator)
) -> VMGroup:
    return await group_service.create(request.app.state.ctx.db, body)


@router.patch("/groups/{name}", response_model=VMGroup)
async def update_group(
    name: Name, body: GroupUpdate, request: Request, _: Principal = Depends(auth.operator)
) -> VMGroup:
    """Change a group's rules; what the body leaves out stays. A strict rule that the
    members break where they are now is refused (409, the reason says who is where)."""
    return await group_service.update(request.app.state.ctx.db, name, body)


@router.delete("/groups/{name}", status_code=204)
async def delete_group(name: Name, request: Request, _: Principal = Depends(auth.operator)) -> None:
    await group_service.delete(request.app.state.ctx.db, name)
