"""What each node's VMs measured to use, published for the leader's balancing (DRS) and
placement: a minute's average, written every half minute by the node that runs them."""

from collections.abc import Iterable

from pydantic import BaseModel, Field

from heron.models.common import Record


class VmDemand(BaseModel):
    cpu: float = Field(ge=0, description="host cores the VM's QEMU used (CPU time per second)")
    ready: float = Field(
        ge=0,
        description="cores' worth of time its vCPUs were runnable but waited for a host CPU "
        "(vSphere's CPU ready): demand the node could not serve",
    )
    memory_mib: float = Field(ge=0, description="host RAM its QEMU holds (resident set)")

    @property
    def cpu_demand(self) -> float:
        """Cores the VM wanted: what it used and what it waited for."""
        return self.cpu + self.ready


class NodeDemand(Record):
    node: str
    at: float = Field(description="when measured (seconds since the epoch)")
    window: float = Field(description="seconds the figures average over")
    vms: dict[str, VmDemand] = Field(
        default_factory=dict, description="by VM id: each VM measured here within the window"
    )


def by_vm(records: Iterable[NodeDemand]) -> dict[str, VmDemand]:
    """Each VM's demand from the newest record that has it. A VM that just migrated is in
    its source's record (a minute's window still holds it) until its target's has it."""
    found: dict[str, VmDemand] = {}
    for record in sorted(records, key=lambda r: r.at):
        found.update(record.vms)
    return found
