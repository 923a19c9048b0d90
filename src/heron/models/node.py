"""A node: one server running herond."""

from typing import Literal

from pydantic import Field

from heron.models.common import Name, Record

Accelerator = Literal["kvm", "tcg"]


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
    maintenance: bool = Field(
        default=False, description="kept free of VMs; set by the admin (NodeSettings)"
    )


class NodeSettings(Record):
    """What the admin decides about a node; kept apart from what the node registers itself,
    so it outlives the node's lease and restarts."""

    maintenance: bool = False
    changed_at: float
