"""VM groups: placement rules (affinity, anti-affinity) for sets of VMs."""

import time
from typing import Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from heron.api import auth
from heron.api.auth import Principal
from heron.api.errors import Conflict, NotFound
from heron.configdb import keys
from heron.configdb.store import Conflict as StoreConflict
from heron.models.common import Name
from heron.models.group import VMGroup
from heron.models.vm import VM, HAPolicy

router = APIRouter(tags=["groups"])


class GroupCreate(BaseModel):
    model_config = {"extra": "forbid"}
    name: Name
    placement: Literal["none", "spread", "together"] = "none"
    strict: bool = Field(default=True, description="must (refuse to place) or should (prefer)")
    ha: HAPolicy | None = Field(default=None, description="HA for members without their own")


@router.get("/groups", response_model=list[VMGroup])
async def list_groups(request: Request, _: Principal = Depends(auth.viewer)) -> list[VMGroup]:
    return [e.value for e in await request.app.state.ctx.db.list(VMGroup, keys.GROUPS)]


@router.post("/groups", response_model=VMGroup, status_code=201)
async def create_group(
    body: GroupCreate, request: Request, _: Principal = Depends(auth.operator)
) -> VMGroup:
    group = VMGroup(**body.model_dump(), created_at=time.time())
    try:
        await request.app.state.ctx.db.create(keys.group(group.name), group)
    except StoreConflict as exc:
        raise Conflict(f"group {group.name} already exists") from exc
    return group


@router.delete("/groups/{name}", status_code=204)
async def delete_group(name: Name, request: Request, _: Principal = Depends(auth.operator)) -> None:
    db = request.app.state.ctx.db
    entry = await db.get(VMGroup, keys.group(name)) if "/" not in name else None
    if entry is None:
        raise NotFound(f"no group {name!r}")
    members = [e.value.spec.name for e in await db.list(VM, keys.VMS) if e.value.spec.group == name]
    if members:
        raise Conflict(f"group {name} still has VMs: {', '.join(sorted(members)[:5])}")
    await db.delete(entry.key, revision=entry.revision)
