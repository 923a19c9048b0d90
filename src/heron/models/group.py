"""VM groups: placement rules that hold for a set of VMs."""

from typing import Literal

from pydantic import BaseModel, Field

from heron.models.common import Name, Record
from heron.models.vm import VM, HAPolicy

Placement = Literal["none", "spread", "together"]


class VMGroup(Record):
    """spread: one member per node (anti-affinity, e.g. the replicas of a database);
    together: all members on one node (affinity, e.g. an app and its cache)."""

    name: Name
    placement: Placement = "none"
    strict: bool = Field(default=True, description="must (refuse to place) or should (prefer)")
    ha: HAPolicy | None = Field(
        default=None, description="HA for members that do not enable it themselves"
    )
    created_at: float


class GroupCreate(BaseModel):
    model_config = {"extra": "forbid"}
    name: Name
    placement: Placement = "none"
    strict: bool = Field(default=True, description="must (refuse to place) or should (prefer)")
    ha: HAPolicy | None = Field(default=None, description="HA for members without their own")


class GroupUpdate(BaseModel):
    """A change of a group's rules; what is left out stays. `ha: null` removes the group's HA
    policy. A strict rule its current members already break is refused."""

    model_config = {"extra": "forbid"}
    placement: Placement | None = None
    strict: bool | None = None
    ha: HAPolicy | None = Field(default=None, description="null: members without their own HA")


def effective_ha(vm: VM, group: VMGroup | None) -> HAPolicy:
    """A VM's own HA policy when it enables HA, else its group's, else none."""
    if vm.spec.ha.enabled or group is None or group.ha is None:
        return vm.spec.ha
    return group.ha
