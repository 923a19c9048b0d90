"""Placement: the node with the lowest load that fits the VM. Pure logic, no I/O."""

from dataclasses import dataclass

from heron.models.node import Node
from heron.models.vm import VM, PowerState


@dataclass(frozen=True)
class NodeLoad:
    name: str
    cpus: int
    memory_mib: int
    memory_used_mib: int = 0
    vcpus_used: int = 0
    vms: int = 0
    maintenance: bool = False

    def fits(self, memory_mib: int) -> bool:
        return self.memory_used_mib + memory_mib <= self.memory_mib

    def score(self, memory_mib: int, vcpus: int) -> float:
        """Lower is better: the busier resource after placing the VM, then the VM count."""
        memory = (self.memory_used_mib + memory_mib) / self.memory_mib
        cpu = (self.vcpus_used + vcpus) / self.cpus
        return max(memory, cpu / 4) + self.vms / 1000


class NoCapacity(Exception):
    pass


def choose_node(
    nodes: list[NodeLoad], memory_mib: int, vcpus: int, allowed: set[str] | None = None
) -> str:
    """The best node for a VM; `allowed` limits the choice (e.g. where its disks are)."""
    candidates = [n for n in nodes if not n.maintenance and (allowed is None or n.name in allowed)]
    if not candidates:
        raise NoCapacity(
            "no node is available"
            + (f" among {', '.join(sorted(allowed))}" if allowed is not None else "")
        )
    fitting = [n for n in candidates if n.fits(memory_mib)]
    if not fitting:
        raise NoCapacity(f"no node has {memory_mib} MiB of memory free")
    return min(fitting, key=lambda n: (n.score(memory_mib, vcpus), n.name)).name


def node_loads(nodes: dict[str, Node], vms: list[VM]) -> list[NodeLoad]:
    used: dict[str, list[VM]] = {name: [] for name in nodes}
    for vm in vms:
        if vm.node in used and vm.power != PowerState.stopped:
            used[vm.node].append(vm)
    return [
        NodeLoad(
            name=n.name,
            cpus=n.cpus,
            memory_mib=n.memory_mib,
            memory_used_mib=sum(v.spec.memory_mib for v in used[n.name]),
            vcpus_used=sum(v.spec.vcpus for v in used[n.name]),
            vms=sum(1 for v in vms if v.node == n.name),
            maintenance=n.maintenance,
        )
        for n in nodes.values()
    ]
