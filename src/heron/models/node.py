"""A node: one server running herond."""

from typing import Literal

from pydantic import Field

from heron.models.common import Name, Record

Accelerator = Literal["kvm", "tcg"]

# What a node's release can do that older releases cannot (`Node.features`): a behaviour that
# needs every node to take part waits until every live node says it can.
WATCHDOG_PRESENCE = "watchdog-presence"  # its leader honours watchdogs' presence (ha/fence.py)
# It receives and sends live migrations over TLS with its node certificate (agent/migration.py):
# a migration is encrypted when both of its nodes say so, plain otherwise.
MIGRATION_TLS = "migration-tls"
# Its heron-io offers and accepts TLS on peer connections (ardfs/peertls.py); once every member
# of a pool says so, its heron-io refuse plain peers.
ARDFS_PEER_TLS = "ardfs-peer-tls"


class Node(Record):
    """What a node registers about itself under its lease. It vanishes when the lease expires."""

    name: Name
    address: str = Field(description="host or IP the other nodes and clients reach it on")
    api_url: str
    cpus: int = Field(ge=1)
    memory_mib: int = Field(ge=1)
    accelerator: Accelerator
    versions: dict[str, str] = Field(default_factory=dict)
    started_at: float
    etcd_peer_url: str | None = Field(
        default=None, description="where this node can run an etcd member, if it can"
    )
    etcd_client_url: str | None = None
    underlay: str | None = Field(
        default=None, description="the address other nodes' VXLAN tunnels reach this node on"
    )
    features: list[str] = Field(
        default_factory=list,
        description="what this node's release can do that older releases cannot",
    )
    maintenance: bool = Field(
        default=False, description="kept free of VMs; set by the admin (NodeSettings)"
    )
    io_cpus: int = Field(
        default=0, ge=0, description="cores reserved for heron-io (NodeSettings): not for VMs"
    )
    io_memory_mib: int = Field(
        default=0, ge=0, description="memory reserved for heron-io (NodeSettings): not for VMs"
    )

    @property
    def vm_cpus(self) -> int:
        """The cores VMs may use: what is not reserved for I/O (at least one)."""
        return max(self.cpus - self.io_cpus, 1)

    @property
    def vm_memory_mib(self) -> int:
        return max(self.memory_mib - self.io_memory_mib, 1)


class NodeSettings(Record):
    """What the admin decides about a node; kept apart from what the node registers itself,
    so it outlives the node's lease and restarts."""

    maintenance: bool = False
    left: bool = Field(default=False, description="removed from the cluster by the admin")
    io_cpus: int = Field(default=0, ge=0, le=1024, description="cores reserved for heron-io")
    io_memory_mib: int = Field(
        default=0, ge=0, le=64 * 1024 * 1024, description="memory reserved for heron-io"
    )
    changed_at: float


class EtcdJoin(Record):
    """The leader's word that a node shall run an etcd member (added as a learner)."""

    node: Name
    member_id: int
    client_url: str
    peer_url: str
    initial_cluster: dict[str, str]


class Watchdog(Record):
    """A node's fence watchdog, present while it runs and the node's agent was heard from
    within the grace (`HASettings.agent_grace`); it vanishes with its lease otherwise."""

    node: Name
    started_at: float
