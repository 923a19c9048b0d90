"""Dynamic balancing (DRS): which one VM to move, if any, to even out memory load. Pure logic.

Load is the share of a node's memory its running VMs take. When the busiest and the idlest
node differ by more than the threshold, the candidate moves are every running VM on the
busiest node to any other node with room (and allowed by the VM's group rule); the chosen one
leaves the smallest spread between busiest and idlest afterwards, and only if that spread is
smaller than now: a move that merely swaps the two nodes' roles is never made, so VMs do not
bounce back and forth.
"""

from dataclasses import dataclass, replace

from heron.models.group import VMGroup
from heron.models.vm import VM
from heron.scheduler.placement import NodeLoad, affinity_for


@dataclass(frozen=True)
class Move:
    vm: VM
    source: str
    target: str
    before: float  # spread of memory load now
    after: float  # spread once moved

    @property
    def explanation(self) -> str:
        return (
            f"memory load spread {self.before:.0%} exceeds the threshold; moving "
            f"{self.vm.spec.name} ({self.vm.spec.memory_mib} MiB) from {self.source} to "
            f"{self.target} brings it to {self.after:.0%}"
        )


def _usage(load: NodeLoad) -> float:
    return load.memory_used_mib / load.memory_mib


def spread(loads: list[NodeLoad]) -> float:
    usable = [_usage(n) for n in loads if not n.maintenance]
    return max(usable) - min(usable) if len(usable) > 1 else 0.0


def propose(
    loads: list[NodeLoad],
    vms: list[VM],
    threshold: float,
    groups: dict[str, VMGroup] | None = None,
    movable: set[str] | None = None,
) -> Move | None:
    """The best single move, or None when balanced enough or nothing helps.

    `vms` are the running VMs; `movable` limits which may move (e.g. not already migrating).
    """
    usable = [n for n in loads if not n.maintenance]
    before = spread(usable)
    if len(usable) < 2 or before <= threshold:
        return None
    by_name = {n.name: n for n in usable}
    busiest = max(usable, key=lambda n: (_usage(n), n.name))
    best: Move | None = None
    for vm in sorted(vms, key=lambda v: v.spec.name):
        if vm.node != busiest.name or (movable is not None and vm.id not in movable):
            continue
        rule = affinity_for(vm.id, (groups or {}).get(vm.spec.group or ""), vms)
        for target in usable:
            if target.name == busiest.name or not target.fits(vm.spec.memory_mib):
                continue
            if rule is not None and not rule.allows(target.name):
                continue
            moved = dict(by_name)
            moved[busiest.name] = replace(
                busiest, memory_used_mib=busiest.memory_used_mib - vm.spec.memory_mib
            )
            moved[target.name] = replace(
                target, memory_used_mib=target.memory_used_mib + vm.spec.memory_mib
            )
            after = spread(list(moved.values()))
            if after < before - 1e-9 and (best is None or after < best.after - 1e-9):
                best = Move(vm, busiest.name, target.name, before, after)
    return best


def why_none(loads: list[NodeLoad], threshold: float) -> str:
    """Why `propose` finds no move for these loads (when it finds none)."""
    usable = [n for n in loads if not n.maintenance]
    if len(usable) < 2:
        return "fewer than two nodes take VMs"
    now = spread(usable)
    if now <= threshold:
        return f"memory load spread {now:.0%} is within the threshold {threshold:.0%}"
    return (
        f"memory load spread {now:.0%} exceeds the threshold {threshold:.0%}, but no single "
        "move of a running VM off the busiest node lowers it"
    )
