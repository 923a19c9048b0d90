"""Nodes: the live members of the cluster and their load."""

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

import heron
from heron.api import auth
from heron.api.auth import Principal
from heron.api.errors import Invalid, NotFound
from heron.api.fanout import ask_others
from heron.configdb import keys
from heron.models.alerts import Channel, SmtpSettings
from heron.models.cluster import (
    ClusterAuthority,
    DRSDecision,
    DRSStatus,
    EtcdMemberView,
    JoinInstructions,
    JoinTokenRequest,
    LeaveReply,
    LeaveRequest,
)
from heron.models.common import Name
from heron.models.node import Node
from heron.models.settings import ClusterSettings, ClusterSettingsUpdate
from heron.models.vm import VM
from heron.scheduler.placement import node_loads
from heron.services import cluster as cluster_service
from heron.services import nodes as node_service
from heron.services.lookup import live_nodes
from heron.tls import fingerprint

router = APIRouter(tags=["nodes"])


class NodeView(Node):
    state: str = Field(description="online or maintenance (a node without a lease is not listed)")
    left: bool = Field(
        default=False, description="taken out of the cluster for good (its agent still runs)"
    )
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
    left = await node_service.left_nodes(db)
    return [
        NodeView(
            **node.model_dump(),
            state="maintenance" if node.maintenance else "online",
            left=name in left,
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
    task = await node_service.enter_maintenance(request.app.state.ctx.db, name, principal.user)
    request.state.audit_target = name
    return MaintenanceReply(node=name, maintenance=True, task=task.id)


@router.post("/nodes/{name}/maintenance/exit", response_model=MaintenanceReply)
async def exit_maintenance(
    name: Name, request: Request, _: Principal = Depends(auth.admin)
) -> MaintenanceReply:
    """Let the node take VMs again (they are not moved back by themselves)."""
    await node_service.exit_maintenance(request.app.state.ctx.db, name)
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
    await node_service.reserve_io(request.app.state.ctx.db, name, body.cpus, body.memory_mib)
    request.state.audit_target = name
    return body


@router.get("/cluster/settings", response_model=ClusterSettings)
async def get_settings(request: Request, _: Principal = Depends(auth.viewer)) -> ClusterSettings:
    found = await request.app.state.ctx.db.get(ClusterSettings, keys.SETTINGS)
    return found.value if found else ClusterSettings()


@router.put("/cluster/settings", response_model=ClusterSettings)
async def put_settings(
    body: ClusterSettingsUpdate, request: Request, _: Principal = Depends(auth.admin)
) -> ClusterSettings:
    """Cluster-wide settings, e.g. dynamic balancing (DRS); the leader applies them. Each
    section given replaces that section; sections left out keep what is stored."""
    db = request.app.state.ctx.db
    channel = body.support.channel if body.support else None
    if channel is not None:
        found = await db.get(Channel, keys.channel(channel))
        if found is None or not isinstance(found.value.settings, SmtpSettings):
            raise Invalid("body.support.channel", f"there is no SMTP channel {channel!r}")
    return await cluster_service.update_settings(db, body)


@router.post("/nodes/{name}/leave", response_model=LeaveReply)
async def leave_cluster(
    name: Name,
    request: Request,
    body: LeaveRequest | None = None,
    _: Principal = Depends(auth.admin),
) -> LeaveReply:
    """Take an empty node out of the cluster: its etcd member (if any) is removed, and it is
    kept out of placement for good. Drain it first (maintenance enter). With `dry_run`, only
    the plan: the VMs in the way, the etcd member, what happens to the data on its disks;
    the leave refuses (409) exactly what the plan lists as blockers."""
    db = request.app.state.ctx.db
    request.state.audit_target = name
    if body is not None and body.dry_run:
        plan = await node_service.plan_leave(db, name)
        return LeaveReply(node=name, dry_run=True, etcd_member_removed=False, plan=plan)
    plan, removed = await node_service.leave(db, name)
    return LeaveReply(node=name, dry_run=False, etcd_member_removed=removed, plan=plan)


@router.get("/cluster/members", response_model=list[EtcdMemberView])
async def cluster_members(
    request: Request, _: Principal = Depends(auth.viewer)
) -> list[EtcdMemberView]:
    """etcd's members: voters and learners, and which one leads raft."""
    return await cluster_service.members(request.app.state.ctx.db)


_DECISIONS_MAX = 500


async def _decisions(request: Request, limit: int, local: bool) -> list[DRSDecision]:
    """DRS's decisions in this node's audit log and, unless `local`, every other node's."""
    ctx = request.app.state.ctx
    found = cluster_service.drs_decisions(
        ctx.audit.read(
            limit, where=cluster_service.is_drs_decision, marker=cluster_service.DRS_MARKER
        )
    )
    if not local:
        others = await ask_others(request, "/cluster/drs/decisions", {"limit": limit})
        found += [DRSDecision.model_validate(d) for part in others.values() for d in part]
    return cluster_service.newest(found, limit)


@router.get("/cluster/drs/decisions", response_model=list[DRSDecision])
async def drs_decisions(
    request: Request,
    limit: int = Query(default=20, ge=1, le=_DECISIONS_MAX),
    local: bool = False,
    _: Principal = Depends(auth.viewer),
) -> list[DRSDecision]:
    """DRS's last moves with their reasons, newest first, from every node's audit log (the
    leader of the moment writes them); `local=true` reads only the node that answers."""
    return await _decisions(request, limit, local)


@router.get("/cluster/drs", response_model=DRSStatus)
async def drs_status(
    request: Request,
    decisions: int = Query(default=20, ge=0, le=_DECISIONS_MAX),
    _: Principal = Depends(auth.viewer),
) -> DRSStatus:
    """Dynamic balancing now: its settings, each live node's memory load, the spread against
    the threshold, the move it would make now (or why none) and its last `decisions`."""
    ctx = request.app.state.ctx
    status = await cluster_service.drs_status(ctx.db, ctx.inventory)
    if decisions:
        status.decisions = await _decisions(request, decisions, local=False)
    return status


@router.get("/cluster/join", response_model=JoinInstructions)
async def join_instructions(
    request: Request, _: Principal = Depends(auth.admin)
) -> JoinInstructions:
    """What a new node needs: etcd's client endpoints and the command lines that start it
    (with etcd over TLS, with a placeholder where POST puts a join token)."""
    return await cluster_service.join_instructions(request.app.state.ctx.db)


@router.post("/cluster/join", response_model=JoinInstructions, status_code=201)
async def new_join_token(
    request: Request,
    body: JoinTokenRequest | None = None,
    principal: Principal = Depends(auth.admin),
) -> JoinInstructions:
    """A one-time join token and the command lines that use it: the new node checks the
    CA's fingerprint, sends the token with its certificate signing request to
    `POST /auth/join` of this node, and connects to etcd with the certificate it gets. The
    token is shown only here; it ends after `ttl_seconds` or its first use. (A cluster whose
    etcd is plain needs none: its instructions come back without one.)"""
    ctx = request.app.state.ctx
    instructions = await cluster_service.join_instructions(ctx.db)
    if not instructions.etcd_tls:
        return instructions
    ttl = (body or JoinTokenRequest()).ttl_seconds
    found = await ctx.db.get(ClusterAuthority, keys.CLUSTER_CA)
    me = await ctx.db.get(Node, keys.node(ctx.node))
    if found is None or me is None:
        raise NotFound("the cluster CA or this node's record is not there yet")
    token, record = await cluster_service.new_join_token(ctx.db, principal.user, ttl)
    request.state.audit_target = f"join-token:{cluster_service.join_token_hash(token)[:12]}"
    return await cluster_service.join_instructions(
        ctx.db, (token, record, me.value.api_url, fingerprint(found.value.certificate))
    )
