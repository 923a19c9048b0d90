"""Dynamic balancing (DRS): which one VM to move, if any, to even out the nodes' load. Pure
logic.

A node's load is measured in one or two dimensions, each a share of what the node has:
- basis `demand` (as vSphere's DRS): the CPU its VMs wanted (cores used plus cores' worth of
  time their vCPUs waited, `models/demand.py`) over its cores, and the RAM its VMs hold
  (resident) over its memory for VMs;
- basis `allocated`: the memory its running VMs were given over its memory for VMs.
The imbalance is the largest spread, busiest minus idlest, of any dimension. When it exceeds
the threshold, the candidate moves are every movable VM on a node that is the busiest in a
dimension, to any other node with room for its allocated memory (and allowed by its group's
rule); the chosen one leaves the smallest imbalance afterwards, the cheaper VM to copy
(less memory) on a tie, and only if it lowers the imbalance by a quarter of the threshold at
least (`MIN_GAIN`): a move that merely swaps two nodes' roles is never made, so VMs do not
bounce back and forth, nor is a live migration spent on a small fraction of what matters.
"""

from collections.abc import Mapping
from dataclasses import dataclass, replace

from heron.models.demand import VmDemand
from heron.models.group import VMGroup
from heron.models.settings import DRSBasis
from heron.models.vm import VM
from heron.scheduler.placement import NodeLoad, affinity_for

MIN_GAIN = 0.25  # of the threshold
DIMENSIONS: dict[DRSBasis, tuple[str, ...]] = {
    "demand": ("CPU demand", "memory demand"),
    "allocated": ("memory load",),
}


@dataclass(frozen=True)
class Move:
    vm: VM
    source: str
    target: str
    before: float  # the imbalance now
    after: float  # the imbalance once moved
    dimension: str  # the one whose spread is the imbalance now
    demand: VmDemand | None = None  # what the VM was measured to use (basis demand)

    @property
    def explanation(self) -> str:
        if self.demand is None:
            size = f"{self.vm.spec.memory_mib} MiB"
        else:
            d = self.demand
            size = f"{d.cpu:.2f} cores used, {d.ready:.2f} waited, {d.memory_mib:.0f} MiB resident"
        return (
            f"{self.dimension} spread {self.before:.0%} exceeds the threshold; moving "
            f"{self.vm.spec.name} ({size}) from {self.source} to {self.target} brings it to "
            f"{self.after:.0%}"
        )


def shares(load: NodeLoad, basis: DRSBasis) -> tuple[float, ...]:
    """The node's load in each dimension of the basis, as shares of what it has."""
    if basis == "allocated":
        return (load.memory_used_mib / load.memory_mib,)
    return (load.cpu_demand / load.cpus, load.memory_demand_mib / load.memory_mib)


def spreads(loads: list[NodeLoad], basis: DRSBasis = "allocated") -> tuple[float, ...]:
    """Busiest minus idlest, per dimension, among the nodes that take VMs."""
    usable = [shares(n, basis) for n in loads if not n.maintenance]
    if len(usable) < 2:
        return tuple(0.0 for _ in DIMENSIONS[basis])
    return tuple(max(column) - min(column) for column in zip(*usable, strict=True))


def spread(loads: list[NodeLoad], basis: DRSBasis = "allocated") -> float:
    """The imbalance: the largest spread of any dimension."""
    return max(spreads(loads, basis))


def _moved(load: NodeLoad, vm: VM, demand: VmDemand | None, sign: int) -> NodeLoad:
    changed = replace(load, memory_used_mib=load.memory_used_mib + sign * vm.spec.memory_mib)
    if demand is None:
        return changed
    return replace(
        changed,
        cpu_demand=changed.cpu_demand + sign * demand.cpu_demand,
        memory_demand_mib=changed.memory_demand_mib + sign * demand.memory_mib,
    )


def propose(
    loads: list[NodeLoad],
    vms: list[VM],
    threshold: float,
    groups: dict[str, VMGroup] | None = None,
    movable: set[str] | None = None,
    demand: Mapping[str, VmDemand] | None = None,
) -> Move | None:
    """The best single move, or None when balanced enough or nothing helps.

    `vms` are the running VMs; `movable` limits which may move (e.g. not already migrating).
    With `demand` (by VM id; `loads` then carry the nodes' measured demand) the basis is
    demand, and a VM not measured yet does not move."""
    basis: DRSBasis = "allocated" if demand is None else "demand"
    usable = [n for n in loads if not n.maintenance]
    now = spreads(usable, basis)
    before = max(now)
    if len(usable) < 2 or before <= threshold:
        return None
    dimension = DIMENSIONS[basis][now.index(before)]
    by_name = {n.name: n for n in usable}
    weighed = [(shares(n, basis), n.name) for n in usable]
    sources = {  # the busiest node of each dimension out of balance
        max((s[i], name) for s, name in weighed)[1]
        for i, each in enumerate(now)
        if each > threshold
    }
    best: Move | None = None
    for vm in sorted(vms, key=lambda v: (v.spec.memory_mib, v.spec.name)):
        if vm.node not in sources or (movable is not None and vm.id not in movable):
            continue
        measured = demand.get(vm.id) if demand is not None else None
        if demand is not None and measured is None:
            continue
        rule = affinity_for(vm.id, (groups or {}).get(vm.spec.group or ""), vms)
        source = by_name[vm.node]
        for target in usable:
            if target.name == source.name or not target.fits(vm.spec.memory_mib):
                continue
            if rule is not None and not rule.allows(target.name):
                continue
            moved = dict(by_name)
            moved[source.name] = _moved(source, vm, measured, -1)
            moved[target.name] = _moved(target, vm, measured, +1)
            after = spread(list(moved.values()), basis)
            if after <= before - MIN_GAIN * threshold and (
                best is None or after < best.after - 1e-9
            ):
                best = Move(vm, source.name, target.name, before, after, dimension, measured)
    return best


def why_none(loads: list[NodeLoad], threshold: float, basis: DRSBasis = "allocated") -> str:
    """Why `propose` finds no move for these loads (when it finds none)."""
    usable = [n for n in loads if not n.maintenance]
    if len(usable) < 2:
        return "fewer than two nodes take VMs"
    now = spreads(usable, basis)
    worst = max(now)
    dimension = DIMENSIONS[basis][now.index(worst)]
    if worst <= threshold:
        return f"{dimension} spread {worst:.0%} is within the threshold {threshold:.0%}"
    return (
        f"{dimension} spread {worst:.0%} exceeds the threshold {threshold:.0%}, but no single "
        "move of a running VM off the busiest node lowers it by a quarter of the threshold "
        "or more"
    )
