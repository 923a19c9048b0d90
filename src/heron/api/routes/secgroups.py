"""Security groups: stateful rules for the NICs naming them."""

from fastapi import APIRouter, Depends, Request

from heron.api import auth
from heron.api.auth import Principal
from heron.models.common import Name
from heron.models.network import Rule, SecurityGroup, SecurityGroupCreate, SecurityGroupUpdate
from heron.services import secgroups as service

router = APIRouter(tags=["security groups"])


@router.get("/security-groups", response_model=list[SecurityGroup])
async def list_security_groups(
    request: Request, _: Principal = Depends(auth.viewer)
) -> list[SecurityGroup]:
    return await service.list_security_groups(request.app.state.ctx.db)


@router.get("/security-groups/{name}", response_model=SecurityGroup)
async def get_security_group(
    name: Name, request: Request, _: Principal = Depends(auth.viewer)
) -> SecurityGroup:
    return (await service.find_security_group(request.app.state.ctx.db, name)).value


@router.post("/security-groups", response_model=SecurityGroup, status_code=201)
async def create_security_group(
    body: SecurityGroupCreate, request: Request, _: Principal = Depends(auth.admin)
) -> SecurityGroup:
    """Define a group; NICs name it in `security_groups` to be filtered by its rules."""
    return await service.create_security_group(request.app.state.ctx.db, body)


@router.patch("/security-groups/{name}", response_model=SecurityGroup)
async def update_security_group(
    name: Name, body: SecurityGroupUpdate, request: Request, _: Principal = Depends(auth.admin)
) -> SecurityGroup:
    """Change the description, or replace the rules (applied at once on every node)."""
    return await service.update_security_group(request.app.state.ctx.db, name, body)


@router.post("/security-groups/{name}/rules", response_model=SecurityGroup, status_code=201)
async def add_rule(
    name: Name, body: Rule, request: Request, _: Principal = Depends(auth.admin)
) -> SecurityGroup:
    """Add one rule (a rule the group has already is not added twice)."""
    return await service.add_rule(request.app.state.ctx.db, name, body)


@router.delete("/security-groups/{name}/rules/{index}", response_model=SecurityGroup)
async def remove_rule(
    name: Name, index: int, request: Request, _: Principal = Depends(auth.admin)
) -> SecurityGroup:
    """Take rule `index` (from 0, in the order listed) away."""
    return await service.remove_rule(request.app.state.ctx.db, name, index)


@router.delete("/security-groups/{name}", status_code=204)
async def delete_security_group(
    name: Name, request: Request, _: Principal = Depends(auth.admin)
) -> None:
    """Delete a group no NIC and no other group's rule names (409 otherwise)."""
    await service.delete_security_group(request.app.state.ctx.db, name)
