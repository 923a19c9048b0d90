"""VM groups: placement rules that hold for a set of VMs."""

from typing import Literal

from pydantic import Field

from heron.models.common import Name, Record


class VMGroup(Record):
    """spread: one member per node (anti-affinity, e.g. the replicas of a database);
    together: all members on one node (affinity, e.g. an app and its cache)."""

    name: Name
    placement: Literal["none", "spread", "together"] = "none"
    strict: bool = Field(default=True, description="must (refuse to place) or should (prefer)")
    created_at: float
