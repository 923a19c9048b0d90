"""What an administrator reads about the cluster as a whole: etcd's members, the state of
dynamic balancing (DRS), how a node joins, and what a node's leaving would do."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from heron.models.settings import DRSBasis, DRSSettings


class EtcdMemberView(BaseModel):
    id: str = Field(description="etcd's member id, in hex as etcdctl prints it")
    name: str = Field(description="empty until the member has started")
    peer_urls: list[str]
    client_urls: list[str]
    learner: bool = Field(description="a learner catches up and does not vote")
    leader: bool = Field(description="leads etcd's raft (false for all when it cannot be told)")


class NodeLoadView(BaseModel):
    """A node as DRS weighs it."""

    node: str
    memory_mib: int = Field(description="memory for VMs")
    memory_used_mib: int = Field(description="given to its running VMs")
    load: float = Field(description="memory_used_mib / memory_mib")
    maintenance: bool = Field(description="not balanced (kept free of VMs)")
    cpus: int = Field(description="cores for VMs")
    cpu_demand: float | None = Field(
        default=None,
        description="cores its VMs were measured to want (used and waited for); null when "
        "the basis in force is allocated",
    )
    memory_demand_mib: float | None = Field(
        default=None, description="RAM its VMs hold (resident); null as cpu_demand"
    )


class DRSProposal(BaseModel):
    vm: str = Field(description="the VM's id")
    vm_name: str
    memory_mib: int
    source: str
    destination: str
    spread_after: float
    explanation: str
    cpu_demand: float | None = Field(default=None, description="cores the VM wanted (basis demand)")
    memory_demand_mib: float | None = Field(
        default=None, description="RAM the VM holds (basis demand)"
    )


class DRSDecision(BaseModel):
    """A move DRS made, as it wrote it to the audit log."""

    time: float
    node: str = Field(description="the node (the leader then) whose audit log holds it")
    vm: str = Field(description="the VM's id")
    vm_name: str | None = None
    source: str | None = None
    destination: str | None = None
    reason: str
    task: str | None = None


class DRSStatus(BaseModel):
    settings: DRSSettings
    basis: DRSBasis = Field(
        description="the basis in force: the one asked for, or allocated while a node "
        "running VMs has no recent measurement"
    )
    basis_note: str | None = Field(
        default=None, description="why the basis in force is not the one asked for"
    )
    loads: list[NodeLoadView] = Field(description="every live node's load now")
    spread: float = Field(
        description="the imbalance: busiest minus idlest load of the most uneven dimension, "
        "nodes in maintenance aside"
    )
    exceeded: bool = Field(description="the spread is above the threshold")
    proposal: DRSProposal | None = Field(
        description="the move DRS would make now (it acts once the imbalance persisted "
        "`hysteresis` checks and while enabled)"
    )
    why_none: str | None = Field(default=None, description="why there is no proposal")
    decisions: list[DRSDecision] = Field(
        default_factory=list, description="its last decisions, newest first"
    )


class JoinCommand(BaseModel):
    kind: Literal["client", "etcd-capable"]
    description: str
    command: str


class JoinInstructions(BaseModel):
    etcd_endpoints: list[str] = Field(description="client endpoints of etcd's voting members")
    commands: list[JoinCommand]
    etcd_tls: bool = Field(
        default=False,
        description="etcd speaks TLS with client certificates: a new node needs a join token",
    )
    token: str | None = Field(
        default=None,
        description="a one-time join token (POST only), in the commands; shown once, stored hashed",
    )
    expires_at: float | None = Field(default=None, description="when the token ends")
    api_url: str | None = Field(default=None, description="the node the new one asks to join")
    ca_fingerprint: str | None = Field(
        default=None, description="SHA-256 of the cluster CA: the new node checks it"
    )


class JoinTokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ttl_seconds: int = Field(
        default=3600, ge=60, le=7 * 86400, description="how long the token may be used"
    )


class JoinToken(BaseModel):
    """A one-time token a new node shows to have its certificate signed (stored by the
    SHA-256 of the token, under a lease that ends with it)."""

    model_config = ConfigDict(extra="forbid")
    created_by: str
    created_at: float
    expires_at: float


class JoinRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=16, max_length=128)
    csr: str = Field(
        min_length=64,
        max_length=16384,
        description="the new node's certificate signing request, PEM: its names and addresses "
        "in the subjectAltName (its private key stays on it)",
    )


class JoinReply(BaseModel):
    certificate: str = Field(description="the node's certificate, PEM, signed by the cluster CA")
    ca_certificate: str = Field(description="the cluster CA's certificate, PEM")


# -- leaving ------------------------------------------------------------------------------


class ArdfsLeave(BaseModel):
    """What happens to one ardfs pool's data on the disks of a node that leaves."""

    pool: str
    protection: str
    disks: list[str] = Field(description="the node's disks in the pool")
    volumes: int = Field(description="volumes with blocks on those disks")
    disks_left: int = Field(description="the pool's disks on the other nodes")
    disks_needed: int = Field(description="disks the protection spans")
    outcome: Literal["none", "rebuilt", "copied-off", "lost", "degraded"] = Field(
        description="none: nothing on its disks; rebuilt: made again on the other disks from "
        "the other copies; copied-off: some blocks have their only copies on this node, "
        "copied off while it runs; lost: those blocks are gone (the node is down); degraded: "
        "too few disks left for the protection"
    )
    blocking: bool
    message: str


class LocalVolumeLeft(BaseModel):
    pool: str
    id: str
    name: str


class LeaveBlocker(BaseModel):
    kind: Literal["vms", "only-voter", "ardfs"]
    message: str


class LeavePlan(BaseModel):
    """What `POST /nodes/{name}/leave` would do now, changing nothing."""

    node: str
    live: bool = Field(description="the node's agent is up (its lease is held)")
    can_leave: bool
    blockers: list[LeaveBlocker] = Field(description="what the leave refuses for, to fix first")
    vms: list[str] = Field(description="names of the VMs still on it (drain it first)")
    etcd_member: bool = Field(description="its etcd member will be removed")
    only_voter: bool = Field(description="its member is etcd's only voter")
    ardfs: list[ArdfsLeave]
    local_volumes: list[LocalVolumeLeft] = Field(
        description="volumes of node-local pools on it: unreachable once it is gone"
    )


class LeaveRequest(BaseModel):
    model_config = {"extra": "forbid"}
    dry_run: bool = Field(default=False, description="only say what leaving would do")


class LeaveReply(BaseModel):
    node: str
    dry_run: bool
    etcd_member_removed: bool = Field(description="false in a dry run: see plan.etcd_member")
    plan: LeavePlan


class ClusterAuthority(BaseModel):
    """The cluster's certificate authority, kept in the ConfigDB so that every node can sign
    its own certificate when it joins or renews (as Proxmox keeps its CA in its cluster file
    system). Only node agents read it: no API route returns the key."""

    model_config = ConfigDict(extra="forbid")

    certificate: str = Field(description="PEM")
    key: str = Field(description="PEM, unencrypted")
    created_at: float
    provided: bool = Field(description="the administrator's own CA, given at install")
