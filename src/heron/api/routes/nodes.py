"""Nodes: the live members of the cluster and their load."""

import asyncio
import time
from typing import Any

import aetcd.exceptions
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

import heron
from heron.api import auth
from heron.api.auth import Principal
from heron.api.errors import Conflict, Invalid, NotFound
from heron.configdb import ConfigDB, Entry, Txn, cas, keys
from heron.configdb.membership import Membership
from heron.models.common import Name
from heron.models.node import Node, NodeSettings
from heron.models.settings import ClusterSettings
from heron.models.task import TaskKind, new_task
from heron.models.vm import VM
from heron.scheduler.placement import node_loads
from heron.services.lookup import live_nodes
from heron.services.tasks import with_task

router = APIRouter(tags=["nodes"])


class NodeView(Node):
    state: str = Field(description="online or maintenance (a node without a lease is not listed)")
    leader: bool
    vms: int
    memory_used_mib: int
    vcpus_used: int


async def _views(request: Request) -> list[NodeView]:
    db = request.app.state.ctx.db
    nodes = await live_nodes(db)
    vms = [e.value for e in await db.list(VM, keys.VMS)]
    by_name = {load.name: load for load in node_loads(nodes, vms)}
    found = await db.get_raw(keys.LEADER)
    leader = found[0].decode().split(" ", 1)[0] if found else None
    return [
        NodeView(
            **node.model_dump(),
            state="maintenance" if node.maintenance else "online",
            leader=name == leader,
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
async def get_node(name: Name, request: Request, _: Principal = Depends(auth.viewer)) -> NodeView:
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
    """The cluster at a glance: which node leads (runs HA and the other controllers). The
    counts come from this node's watch-fed copies: the UI asks often, and counting 10 000
    VMs must not mean reading them all from etcd."""
    ctx = request.app.state.ctx
    found = await ctx.db.get_raw(keys.LEADER)
    inventory = await ctx.inventory.ready()
    return ClusterView(
        leader=found[0].decode().split(" ", 1)[0] if found else None,
        nodes=len(inventory.live_nodes()),
        vms=len(inventory.vms),
        version=heron.__version__,
    )


class MaintenanceReply(BaseModel):
    node: str
    maintenance: bool
    task: str | None = None


@router.post("/nodes/{name}/maintenance/enter", response_model=MaintenanceReply, status_code=202)
async def enter_maintenance(
    name: Name, request: Request, principal: Principal = Depends(auth.admin)
) -> MaintenanceReply:
    """Keep new VMs off the node and live-migrate its VMs away (a `node.drain` task)."""
    db = request.app.state.ctx.db
    if name not in await live_nodes(db):
        raise NotFound(f"no live node {name!r}")
    current = await db.get(NodeSettings, keys.node_settings(name))
    settings = _changed(current, maintenance=True)
    task = new_task(TaskKind.node_drain, name, name, principal.user)
    txn = Txn().require_revision(keys.node_settings(name), current.revision if current else 0)
    await db.commit(with_task(txn.put(keys.node_settings(name), settings), task))
    request.state.audit_target = name
    return MaintenanceReply(node=name, maintenance=True, task=task.id)


@router.post("/nodes/{name}/maintenance/exit", response_model=MaintenanceReply)
async def exit_maintenance(
    name: Name, request: Request, _: Principal = Depends(auth.admin)
) -> MaintenanceReply:
    """Let the node take VMs again (they are not moved back by themselves)."""
    db = request.app.state.ctx.db
    if await db.get_raw(keys.node_settings(name)) is None and name not in await live_nodes(db):
        raise NotFound(f"no node {name!r}")
    await _update_settings(db, name, maintenance=False)
    request.state.audit_target = name
    return MaintenanceReply(node=name, maintenance=False)


class IoReservation(BaseModel):
    model_config = {"extra": "forbid"}
    cpus: int = Field(ge=0, le=1024, description="cores for heron-io, taken from the VMs' share")
    memory_mib: int = Field(ge=0, le=64 * 1024 * 1024, description="memory for heron-io")


@router.put("/nodes/{name}/io", response_model=IoReservation)
async def reserve_for_io(
    name: Name, body: IoReservation, request: Request, _: Principal = Depends(auth.admin)
) -> IoReservation:
    """Reserve cores and memory of a node for its storage data path (heron-io): heron-io runs
    on the last `cpus` cores, VMs on the others, and placement counts only what is left."""
    db = request.app.state.ctx.db
    nodes = await live_nodes(db)
    if name not in nodes:
        raise NotFound(f"no live node {name!r}")
    node = nodes[name]
    if body.cpus >= node.cpus:
        raise Invalid("body.cpus", f"node {name} has {node.cpus} cores: leave at least one for VMs")
    if body.memory_mib >= node.memory_mib:
        raise Invalid("body.memory_mib", f"node {name} has {node.memory_mib} MiB")
    await _update_settings(db, name, io_cpus=body.cpus, io_memory_mib=body.memory_mib)
    request.state.audit_target = name
    return body


def _changed(current: Entry[NodeSettings] | None, **changes: Any) -> NodeSettings:
    base = current.value if current else NodeSettings(changed_at=time.time())
    return base.model_copy(update={**changes, "changed_at": time.time()})


async def _update_settings(db: ConfigDB, name: str, **changes: Any) -> None:
    """Change some of what the admin set about a node, keeping the rest."""
    key = keys.node_settings(name)

    async def attempt() -> None:
        current = await db.get(NodeSettings, key)
        revision = current.revision if current else 0
        await db.put(key, _changed(current, **changes), revision=revision)

    await cas.retry(attempt, f"the settings of node {name}")


@router.get("/cluster/settings", response_model=ClusterSettings)
async def get_settings(request: Request, _: Principal = Depends(auth.viewer)) -> ClusterSettings:
    found = await request.app.state.ctx.db.get(ClusterSettings, keys.SETTINGS)
    return found.value if found else ClusterSettings()


@router.put("/cluster/settings", response_model=ClusterSettings)
async def put_settings(
    body: ClusterSettings, request: Request, _: Principal = Depends(auth.admin)
) -> ClusterSettings:
    """Cluster-wide settings, e.g. dynamic balancing (DRS); the leader applies them."""
    await request.app.state.ctx.db.put(keys.SETTINGS, body)
    return body


async def _remove_member(membership: Membership, member_id: int, patience: float = 10.0) -> None:
    """etcd refuses a reconfiguration for a moment after the previous one (its members must
    have been connected for a while): try again until `patience` runs out."""
    deadline = time.monotonic() + patience
    while True:
        try:
            await membership.remove(member_id)
            return
        except aetcd.exceptions.ClientError:
            if all(m.id != member_id for m in await membership.list()):
                return  # an earlier attempt went through after all
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)  # the pause between attempts


class LeaveReply(BaseModel):
    node: str
    etcd_member_removed: bool


@router.post("/nodes/{name}/leave", response_model=LeaveReply)
async def leave_cluster(
    name: Name, request: Request, _: Principal = Depends(auth.admin)
) -> LeaveReply:
    """Take an empty node out of the cluster: its etcd member (if any) is removed, and it is
    kept out of placement for good. Drain it first (maintenance enter)."""
    db = request.app.state.ctx.db
    nodes = await live_nodes(db)
    membership = Membership(db)
    members = await membership.list()
    mine = next((m for m in members if m.name == name), None)
    # A node that is gone for good may be known only as an etcd member any more.
    if name not in nodes and mine is None and await db.get_raw(keys.node_settings(name)) is None:
        raise NotFound(f"no node {name!r}")
    still = [e.value.spec.name for e in await db.list(VM, keys.VMS) if e.value.node == name]
    if still:
        raise Conflict(
            f"node {name} still has VMs ({', '.join(sorted(still)[:5])}): "
            "drain it first with maintenance enter"
        )
    if mine is not None:
        voters = [m for m in members if not m.learner]
        if voters == [mine]:
            raise Conflict(f"node {name} runs the cluster's only etcd voter")
        await _remove_member(membership, mine.id)
    current = await db.get(NodeSettings, keys.node_settings(name))
    settings = _changed(current, maintenance=True, left=True)
    txn = Txn().require_revision(keys.node_settings(name), current.revision if current else 0)
    await db.commit(txn.put(keys.node_settings(name), settings).delete(keys.etcd_join(name)))
    request.state.audit_target = name
    return LeaveReply(node=name, etcd_member_removed=mine is not None)
