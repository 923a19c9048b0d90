"""Distributed switches and their networks (port groups); how each node stands with them."""

from fastapi import APIRouter, Depends, Request

from heron.api import auth
from heron.api.auth import Principal
from heron.models.auth import Role
from heron.models.common import Name
from heron.models.network import (
    Network,
    NetworkCreate,
    NetworkUpdate,
    NodeNetworkStatus,
    Switch,
    SwitchCreate,
    SwitchUpdate,
)
from heron.services import networks as service

router = APIRouter(tags=["networks"])


@router.get("/switches", response_model=list[Switch])
async def list_switches(request: Request, _: Principal = Depends(auth.viewer)) -> list[Switch]:
    return await service.list_switches(request.app.state.ctx.db)


@router.get("/switches/status", response_model=list[NodeNetworkStatus])
async def switch_status(
    request: Request, _: Principal = Depends(auth.viewer)
) -> list[NodeNetworkStatus]:
    """Each node's word on every switch: in sync with the ConfigDB, or what is wrong."""
    return await service.node_status(request.app.state.ctx.db)


@router.get("/switches/{name}", response_model=Switch)
async def get_switch(name: Name, request: Request, _: Principal = Depends(auth.viewer)) -> Switch:
    return (await service.find_switch(request.app.state.ctx.db, name)).value


@router.post("/switches", response_model=Switch, status_code=201)
async def create_switch(
    body: SwitchCreate, request: Request, _: Principal = Depends(auth.admin)
) -> Switch:
    """Define a switch; every node's agent builds it (its bridge, its uplink)."""
    return await service.create_switch(request.app.state.ctx.db, body)


@router.patch("/switches/{name}", response_model=Switch)
async def update_switch(
    name: Name, body: SwitchUpdate, request: Request, _: Principal = Depends(auth.switch_admin)
) -> Switch:
    return await service.update_switch(request.app.state.ctx.db, name, body)


@router.delete("/switches/{name}", status_code=204)
async def delete_switch(name: Name, request: Request, _: Principal = Depends(auth.admin)) -> None:
    """Delete a switch without networks (409 while it has some)."""
    await service.delete_switch(request.app.state.ctx.db, name)


@router.get("/networks", response_model=list[Network])
async def list_networks(
    request: Request, principal: Principal = Depends(auth.authenticate)
) -> list[Network]:
    """The networks the caller sees: all with a cluster-wide role, else those on the switches
    granted to it."""
    db = request.app.state.ctx.db
    switches = await auth.reachable_names(db, principal, "switch")
    return [n for n in await service.list_networks(db) if switches is None or n.switch in switches]


async def _on_switch_of(request: Request, principal: Principal, network: str) -> None:
    """Refuse changing a network unless the caller administers its switch (or the cluster)."""
    if not auth.suffices(principal.role, Role.admin):
        db = request.app.state.ctx.db
        switch = (await service.find_network(db, network)).value.switch
        await auth.check_on(db, principal, [("switch", switch)], Role.admin, f"switch {switch!r}")


@router.get("/networks/{name}", response_model=Network)
async def get_network(name: Name, request: Request, _: Principal = Depends(auth.viewer)) -> Network:
    return (await service.find_network(request.app.state.ctx.db, name)).value


@router.post("/networks", response_model=Network, status_code=201)
async def create_network(
    body: NetworkCreate, request: Request, principal: Principal = Depends(auth.signed_in)
) -> Network:
    """Define a port group of a switch: untagged, a VLAN, a trunk, or a VXLAN segment (the
    cluster's administrators, or those of the switch)."""
    if not auth.suffices(principal.role, Role.admin):
        db = request.app.state.ctx.db
        await auth.check_on(
            db, principal, [("switch", body.switch)], Role.admin, f"switch {body.switch!r}"
        )
    return await service.create_network(request.app.state.ctx.db, body)


@router.patch("/networks/{name}", response_model=Network)
async def update_network(
    name: Name,
    body: NetworkUpdate,
    request: Request,
    principal: Principal = Depends(auth.signed_in),
) -> Network:
    """Change a network's MTU, description or subnet (409 if an address in use would not fit)."""
    await _on_switch_of(request, principal, name)
    return await service.update_network(request.app.state.ctx.db, name, body)


@router.delete("/networks/{name}", status_code=204)
async def delete_network(
    name: Name, request: Request, principal: Principal = Depends(auth.signed_in)
) -> None:
    """Delete a network no NIC uses (409 otherwise)."""
    await _on_switch_of(request, principal, name)
    await service.delete_network(request.app.state.ctx.db, name)
