"""What creating a VM (anew, or as a clone) writes, before it is written: the checks and the
placement both share, and the transaction that makes the VM, its volumes and its task."""

from dataclasses import dataclass
from typing import Any

from heron.configdb import ConfigDB, Txn, keys
from heron.models.node import Node
from heron.models.storage import Volume
from heron.models.task import Task, TaskKind, TaskParams, new_task
from heron.models.vm import (
    LAYOUT,
    VM,
    DiskSpec,
    NicSpec,
    PowerState,
    VMSpec,
    reserved_memory_mib,
    reserved_vcpus,
)
from heron.scheduler.inventory import measured_demand
from heron.scheduler.placement import Affinity, NoCapacity, choose_node, node_loads
from heron.services.errors import Conflict, Invalid
from heron.services.lookup import find_pool
from heron.services.networks import address_nics
from heron.services.tasks import with_task
from heron.storage.registry import capabilities


@dataclass
class Plan:
    """A VM that may be created, and the transaction (with its task) that creates it."""

    vm: VM
    txn: Txn
    task: Task


async def refuse_taken_name(db: ConfigDB, name: str, vms: list[VM]) -> None:
    if await db.get_raw(keys.vm_name(name)) is not None or any(v.spec.name == name for v in vms):
        raise Conflict(f"a VM named {name!r} already exists")


def asked_node(nodes: dict[str, Node], node: str | None) -> set[str] | None:
    """The nodes the VM may run on as the request names them (None: any)."""
    if node is None:
        return None
    if node not in nodes:
        raise Invalid("body.node", f"no live node {node!r}")
    if nodes[node].maintenance:
        raise Conflict(f"node {node} is in maintenance")
    return {node}


def narrowed(pinned: set[str] | None, node: str | None, field: str) -> set[str] | None:
    """`pinned` once a volume of `node` (None: reachable from every node) is the VM's."""
    if node is None:
        return pinned
    if pinned is not None and node not in pinned:
        raise Invalid(
            field, f"is on node {node}, but the VM must run on {', '.join(sorted(pinned))}"
        )
    return {node}


async def place(
    db: ConfigDB,
    vm_id: str,
    hardware: dict[str, Any],
    disks: list[DiskSpec],
    nics: list[NicSpec],
    volumes: list[Volume],
    *,
    nodes: dict[str, Node],
    vms: list[VM],
    pinned: set[str] | None,
    rule: Affinity | None,
    start: bool,
    now: float,
    task: tuple[TaskKind, TaskParams, str],
) -> Plan:
    """Choose the VM's node (room for what it may grow to), give node-local volumes that
    node, address its NICs, and write it all with its task (`task`: kind, params, user)."""
    addressed_nics, addressed = await address_nics(db, vm_id, nics, vms)
    spec = VMSpec(
        **hardware,
        disks=disks,
        nics=[n.model_copy(update={"slot": slot}) for slot, n in enumerate(addressed_nics)],
        layout=LAYOUT,
    )
    loads = node_loads(nodes, vms, await measured_demand(db, nodes, now))
    try:
        node = choose_node(loads, reserved_memory_mib(spec), reserved_vcpus(spec), pinned, rule)
    except NoCapacity as exc:
        raise Conflict(str(exc)) from exc
    for volume in volumes:
        if not capabilities((await find_pool(db, volume.pool)).value).shared:
            volume.node = node
    power = PowerState.running if start else PowerState.stopped
    vm = VM(id=vm_id, spec=spec, node=node, power=power, created_at=now)
    kind, params, user = task
    made = new_task(kind, node, vm_id, user, params)
    txn = Txn().require_absent(keys.vm_name(spec.name)).put(keys.vm_name(spec.name), vm_id)
    txn.put(keys.vm(vm_id), vm).merge(addressed)
    for volume in volumes:
        txn.require_absent(keys.volume_name(volume.pool, volume.name))
        txn.put(keys.volume_name(volume.pool, volume.name), volume.id)
        txn.put(keys.volume(volume.id), volume)
    return Plan(vm, with_task(txn, made), made)
