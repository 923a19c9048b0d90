"""VM groups: placement rules that hold for a set of VMs."""

from typing import Literal

from pydantic import Field

from heron.models.common import Name, Record
from heron.models.vm import VM, HAPolicy


class VMGroup(Record):
    """spread: one member per node (anti-affinity, e.g. the replicas of a database);
    together: all members on one node (affinity, e.g. an app and its cache)."""

    name: Name
    placement: Literal["none", "spread", "together"] = "none"
    strict: bool = Field(default=True, description="must (refuse to place) or should (prefer)")
    ha: HAPolicy | None = Field(
        default=None, description="HA for members that do not enable it themselves"
    )
    created_at: float


def effective_ha(vm: VM, group: VMGroup | None) -> HAPolicy:
    """A VM's own HA policy when it enables HA, else its group's, else none."""
    if vm.spec.ha.enabled or group is None or group.ha is None:
        return vm.spec.ha
    return group.ha
