"""Where the VMs of a failed node go: pure logic, so it is tested without a cluster."""

from dataclasses import dataclass, replace

from heron.models.group import VMGroup, effective_ha
from heron.models.vm import VM, reserved_memory_mib, reserved_vcpus
from heron.scheduler.placement import NoCapacity, NodeLoad, affinity_for, choose_node


@dataclass(frozen=True)
class Plan:
    moves: list[tuple[VM, str]]  # VM -> target node, in restart order
    pending: list[tuple[VM, str]]  # VM -> why it cannot start now


def plan_restarts(
    vms: list[VM],
    nodes: list[NodeLoad],
    shared_volumes: set[str],
    groups: dict[str, VMGroup] | None = None,
    others: list[VM] | None = None,
) -> Plan:
    """Restart order is priority (highest first), then name; each placement counts its VM's
    memory (and group membership) against the target before the next VM is placed.
    `others` are the VMs already running elsewhere, for the groups' rules."""
    loads = {n.name: n for n in nodes}
    placed = list(others or [])
    groups = groups or {}
    moves: list[tuple[VM, str]] = []
    pending: list[tuple[VM, str]] = []

    def priority(vm: VM) -> int:
        return effective_ha(vm, groups.get(vm.spec.group or "")).priority

    for vm in sorted(vms, key=lambda v: (-priority(v), v.spec.name)):
        local = [d.volume for d in vm.spec.disks if d.volume not in shared_volumes]
        if local:
            pending.append((vm, f"its disk {local[0]} is on the failed node's local storage"))
            continue
        rule = affinity_for(vm.id, groups.get(vm.spec.group or ""), placed)
        try:
            target = choose_node(
                list(loads.values()),
                reserved_memory_mib(vm.spec),
                reserved_vcpus(vm.spec),
                affinity=rule,
            )
        except NoCapacity as exc:
            pending.append((vm, f"waiting for capacity: {exc}"))
            continue
        load = loads[target]
        loads[target] = replace(
            load,
            memory_used_mib=load.memory_used_mib + reserved_memory_mib(vm.spec),
            vcpus_used=load.vcpus_used + reserved_vcpus(vm.spec),
            vms=load.vms + 1,
        )
        moves.append((vm, target))
        placed.append(vm.model_copy(update={"node": target}))
    return Plan(moves, pending)
