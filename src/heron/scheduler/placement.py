"""Placement: the node with the lowest load that fits the VM, within the VM group's rule.
Pure logic, no I/O."""

from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from heron.errors import SchedulingError
from heron.models.demand import NodeDemand, by_vm
from heron.models.group import VMGroup as VMGroupRule
from heron.models.node import Node
from heron.models.vm import VM, PowerState, reserved_memory_mib, reserved_vcpus


@dataclass(frozen=True)
class NodeLoad:
    name: str
    cpus: int
    memory_mib: int
    memory_used_mib: int = 0
    vcpus_used: int = 0
    vms: int = 0
    maintenance: bool = False
    # What its VMs were measured to use (models/demand.py): cores wanted, MiB resident.
    cpu_demand: float = 0.0
    memory_demand_mib: float = 0.0

    def fits(self, memory_mib: int) -> bool:
        return self.memory_used_mib + memory_mib <= self.memory_mib

    def score(self, memory_mib: int, vcpus: int) -> float:
        """Lower is better: the busier resource after placing the VM, then the VM count.
        CPU counts as the vCPUs given (four per core before it weighs as much as memory) or
        as the cores the VMs were measured to want, whichever is busier."""
        memory = (self.memory_used_mib + memory_mib) / self.memory_mib
        cpu = max((self.vcpus_used + vcpus) / self.cpus / 4, self.cpu_demand / self.cpus)
        return max(memory, cpu) + self.vms / 1000


class PlacementError(SchedulingError):
    """No node can take the VM as asked; the message says why."""


class NoCapacity(PlacementError):
    """No node has the room, or the rules leave none."""


class NotAllowed(PlacementError):
    """The node asked for exists but may not take the VM (maintenance, a group's rule)."""


class UnknownNode(PlacementError):
    """The node asked for is not a live node of the cluster."""


@dataclass(frozen=True)
class Affinity:
    """A VM group's rule as it bears on placing one of its VMs.

    spread (anti-affinity): one VM of the group per node; together (affinity): all on one.
    Strict rules exclude nodes; soft ones only weigh them.
    """

    group: str
    placement: Literal["spread", "together"]
    strict: bool
    members_on: Counter[str] = field(default_factory=Counter)  # node -> other members there

    def allows(self, node: str) -> bool:
        if not self.strict:
            return True
        if self.placement == "spread":
            return self.members_on[node] == 0
        return not self.members_on or self.members_on[node] > 0

    def penalty(self, node: str) -> float:
        count = self.members_on[node]
        return float(count if self.placement == "spread" else -count)


def choose_node(
    nodes: list[NodeLoad],
    memory_mib: int,
    vcpus: int,
    allowed: set[str] | None = None,
    affinity: Affinity | None = None,
) -> str:
    """The best node for a VM; `allowed` limits the choice (e.g. where its disks are)."""
    candidates = [n for n in nodes if not n.maintenance and (allowed is None or n.name in allowed)]
    if not candidates:
        raise NoCapacity(
            "no node is available"
            + (f" among {', '.join(sorted(allowed))}" if allowed is not None else "")
        )
    if affinity is not None:
        candidates = [n for n in candidates if affinity.allows(n.name)]
        if not candidates:
            rule = "one VM per node" if affinity.placement == "spread" else "all on one node"
            raise NoCapacity(f"group {affinity.group} ({rule}) leaves no node")
    fitting = [n for n in candidates if n.fits(memory_mib)]
    if not fitting:
        raise NoCapacity(f"no node has {memory_mib} MiB of memory free")

    def rank(n: NodeLoad) -> tuple[float, float, str]:
        rule = affinity.penalty(n.name) if affinity is not None else 0.0
        return (rule, n.score(memory_mib, vcpus), n.name)

    return min(fitting, key=rank).name


def node_loads(
    nodes: dict[str, Node], vms: list[VM], demand: Mapping[str, NodeDemand] | None = None
) -> list[NodeLoad]:
    """Each node's load from the VMs assigned to it (running or paused ones use resources),
    with what they were measured to use where the nodes' `demand` records tell it."""
    count: Counter[str] = Counter()
    memory: Counter[str] = Counter()
    vcpus: Counter[str] = Counter()
    measured = by_vm(demand.values()) if demand else {}
    wanted: defaultdict[str, float] = defaultdict(float)
    resident: defaultdict[str, float] = defaultdict(float)
    for vm in vms:  # one pass: this runs for every create, with thousands of VMs
        count[vm.node] += 1
        if vm.power != PowerState.stopped:
            # What it may grow to while running is kept for it (hotplug).
            memory[vm.node] += reserved_memory_mib(vm.spec)
            vcpus[vm.node] += reserved_vcpus(vm.spec)
            if (d := measured.get(vm.id)) is not None:
                wanted[vm.node] += d.cpu_demand
                resident[vm.node] += d.memory_mib
    return [
        NodeLoad(
            name=n.name,
            cpus=n.vm_cpus,
            memory_mib=n.vm_memory_mib,
            memory_used_mib=memory[n.name],
            vcpus_used=vcpus[n.name],
            vms=count[n.name],
            maintenance=n.maintenance,
            cpu_demand=wanted[n.name],
            memory_demand_mib=resident[n.name],
        )
        for n in nodes.values()
    ]


def affinity_for(vm_id: str | None, group: VMGroupRule | None, vms: list[VM]) -> Affinity | None:
    """The rule for placing VM `vm_id` of `group`, counting the group's other VMs by node."""
    if group is None or group.placement == "none":
        return None
    members = Counter(v.node for v in vms if v.spec.group == group.name and v.id != vm_id)
    return Affinity(group.name, group.placement, group.strict, members)


def rule_broken(group: VMGroupRule, vms: list[VM]) -> str | None:
    """Why the group's members, where they are now, break its rule if it is strict; None if
    they keep it. A soft rule is never broken: it only weighs the choice of nodes."""
    if not group.strict or group.placement == "none":
        return None
    by_node: dict[str, list[str]] = {}
    for vm in sorted(vms, key=lambda v: v.spec.name):
        if vm.spec.group == group.name:
            by_node.setdefault(vm.node, []).append(vm.spec.name)
    if group.placement == "spread":
        shared = {node: names for node, names in sorted(by_node.items()) if len(names) > 1}
        if not shared:
            return None
        where = "; ".join(f"{', '.join(names)} on {node}" for node, names in shared.items())
        return f"one VM per node is broken by members sharing a node: {where}"
    if len(by_node) <= 1:
        return None
    where = "; ".join(f"{', '.join(names)} on {node}" for node, names in sorted(by_node.items()))
    return f"all on one node is broken by members on {len(by_node)} nodes: {where}"


def migration_target(
    nodes: list[NodeLoad],
    source: str,
    memory_mib: int,
    vcpus: int,
    affinity: Affinity | None = None,
    requested: str | None = None,
) -> str:
    """Where a running VM on `source` may live-migrate: `requested` if it may go there, else
    the best other node. One rule for the API, drain and DRS alike."""
    if requested is None:
        others = {n.name for n in nodes if n.name != source}
        return choose_node(nodes, memory_mib, vcpus, others, affinity)
    node = next((n for n in nodes if n.name == requested), None)
    if node is None:
        raise UnknownNode(f"no live node {requested!r}")
    if requested == source:
        raise UnknownNode(f"the VM already runs on {source}")
    if node.maintenance:
        raise NotAllowed(f"node {requested} is in maintenance")
    if affinity is not None and not affinity.allows(requested):
        raise NotAllowed(f"group {affinity.group}'s {affinity.placement} rule forbids {requested}")
    return requested
