"""Nodes: the live members of the cluster and their load."""

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

import heron
from heron.api import auth
from heron.api.auth import Principal
from heron.api.cluster import live_nodes
from heron.api.errors import NotFound
from heron.configdb import keys
from heron.models.node import Node
from heron.models.vm import VM
from heron.scheduler.placement import node_loads

router = APIRouter(tags=["nodes"])


class NodeView(Node):
    state: str = "online"
    vms: int
    memory_used_mib: int
    vcpus_used: int


async def _views(request: Request) -> list[NodeView]:
    db = request.app.state.ctx.db
    nodes = await live_nodes(db)
    vms = [e.value for e in await db.list(VM, keys.VMS)]
    by_name = {load.name: load for load in node_loads(nodes, vms)}
    return [
        NodeView(
            **node.model_dump(),
            vms=by_name[name].vms,
            memory_used_mib=by_name[name].memory_used_mib,
            vcpus_used=by_name[name].vcpus_used,
        )
        for name, node in sorted(nodes.items())
    ]


@router.get("/nodes", response_model=list[NodeView])
async def list_nodes(request: Request, _: Principal = Depends(auth.viewer)) -> list[NodeView]:
    return await _views(request)


@router.get("/nodes/{name}", response_model=NodeView)
async def get_node(name: str, request: Request, _: Principal = Depends(auth.viewer)) -> NodeView:
    for view in await _views(request):
        if view.name == name:
            return view
    raise NotFound(f"no live node {name!r}")


class ClusterView(BaseModel):
    leader: str | None
    nodes: int
    vms: int
    version: str


@router.get("/cluster", response_model=ClusterView)
async def cluster(request: Request, _: Principal = Depends(auth.viewer)) -> ClusterView:
    """The cluster at a glance: which node leads (runs HA and the other controllers)."""
    db = request.app.state.ctx.db
    found = await db.get_raw(keys.LEADER)
    return ClusterView(
        leader=found[0].decode().split(" ", 1)[0] if found else None,
        nodes=len(await live_nodes(db)),
        vms=len(await db.list(VM, keys.VMS)),
        version=heron.__version__,
    )
