"""The balancer: one move at a time, only when it helps, never a ping-pong."""

from fakes.configdb import FakeConfigDB

from heron.configdb import keys
from heron.models.demand import NodeDemand, VmDemand
from heron.models.group import VMGroup
from heron.models.node import Node
from heron.models.settings import DRSSettings
from heron.models.snapshot import Snapshot, SnapshotDisk, new_snapshot_id
from heron.models.storage import Pool, Volume
from heron.models.vm import VM, DiskSpec, VMSpec, VMStatus
from heron.scheduler.balancer import propose, spread
from heron.scheduler.drs import assess
from heron.scheduler.inventory import Inventory
from heron.scheduler.placement import NodeLoad, choose_node, node_loads

ALLOCATED = DRSSettings(basis="allocated", threshold=0.2)


def vm(name: str, node: str, memory: int = 256, group: str | None = None) -> VM:
    return VM(
        id=name, spec=VMSpec(name=name, memory_mib=memory, group=group), node=node, created_at=0
    )


def loads(vms: list[VM], names: tuple[str, ...] = ("a", "b", "c")) -> list[NodeLoad]:
    return [
        NodeLoad(
            n,
            cpus=8,
            memory_mib=1024,
            memory_used_mib=sum(v.spec.memory_mib for v in vms if v.node == n),
        )
        for n in names
    ]


def test_moves_from_the_busiest_to_the_idlest_until_balanced() -> None:
    vms = [vm(f"v{i}", "a") for i in range(4)]  # a: 100 %, b and c empty
    moves = 0
    while (move := propose(loads(vms), vms, threshold=0.2)) is not None:
        assert move.after < move.before and "brings it to" in move.explanation
        vms = [v.model_copy(update={"node": move.target}) if v.id == move.vm.id else v for v in vms]
        moves += 1
    assert moves == 2 and spread(loads(vms)) == 0.25  # 2/1/1: another move would only swap


def test_nothing_below_the_threshold_or_when_no_move_helps() -> None:
    assert propose(loads([vm("x", "a")]), [vm("x", "a")], threshold=0.3) is None
    big = [vm("big", "a", memory=1024)]
    assert propose(loads(big), big, threshold=0.1) is None  # it would just move the load


def test_respects_group_rules_and_what_may_move() -> None:
    vms = [vm("d1", "a", group="db"), vm("d2", "a", group="db"), vm("d3", "b", group="db")]
    groups = {"db": VMGroup(name="db", placement="spread", created_at=0)}
    move = propose(loads(vms), vms, threshold=0.1, groups=groups)
    assert move is not None and move.target == "c"  # b already runs a member
    assert propose(loads(vms), vms, threshold=0.1, groups=groups, movable=set()) is None


def test_why_none_says_which_case() -> None:
    from heron.scheduler.balancer import why_none

    assert "fewer than two" in why_none(loads([], names=("a",)), 0.2)
    assert "within the threshold 30%" in why_none(loads([vm("x", "a")]), 0.3)
    big = [vm("big", "a", memory=1024)]
    assert "no single move" in why_none(loads(big), 0.1)


async def test_drs_leaves_a_vm_pinned_to_its_node_where_it_is() -> None:
    """A VM with a snapshot of a node-local disk would be refused by the migration (it would
    lose the snapshot): DRS proposes another VM, or nothing."""
    db = FakeConfigDB()
    for name in ("a", "b"):
        node = Node(name=name, address=name, api_url="x", cpus=8, memory_mib=1024,
                    accelerator="tcg", started_at=1)  # fmt: skip
        await db.put(keys.node(name), node)
    await db.put(keys.pool("local"), Pool(name="local", type="dir", created_at=1))
    placed = []
    for name in ("x", "y"):
        volume = Volume(id=f"vol-{name}", pool="local", name=name, format="qcow2", size=1,
                        state="ready", created_at=1)  # fmt: skip
        await db.put(keys.volume(volume.id), volume)
        spec = VMSpec(name=name, memory_mib=512, disks=[DiskSpec(volume=volume.id)])
        placed.append(VM(id=name, spec=spec, node="a", power="running", created_at=1))
        await db.put(keys.vm(name), placed[-1])
        await db.put(keys.vm_status(name), VMStatus(state="running", node="a", updated_at=1))
    inventory = await Inventory(db).ready()
    try:
        assert assess(inventory, ALLOCATED).move is not None
        disk = SnapshotDisk(index=0, volume="vol-x", pool="local", method="qcow2")
        taken = Snapshot(id=new_snapshot_id(), vm="x", name="s", disks=[disk], created_at=1)
        await inventory.snapshots.wait_for(await db.put(keys.snapshot("x", taken.id), taken))
        move = assess(inventory, ALLOCATED).move
        assert move is not None and move.vm.id == "y"
        on_y = disk.model_copy(update={"volume": "vol-y"})
        also = Snapshot(id=new_snapshot_id(), vm="y", name="s", disks=[on_y], created_at=1)
        await inventory.snapshots.wait_for(await db.put(keys.snapshot("y", also.id), also))
        assert assess(inventory, ALLOCATED).move is None
    finally:
        await inventory.stop()


# -- basis demand: what the VMs were measured to use -------------------------------------------


def node(name: str) -> Node:
    return Node(name=name, address=name, api_url="x", cpus=2, memory_mib=4096,
                accelerator="tcg", started_at=1)  # fmt: skip


def busy_node_a() -> tuple[list[VM], dict[str, NodeDemand]]:
    """Node a runs two CPU-bound guests with little memory and two idle ones with more;
    b and c run nothing."""
    vms = [vm("hog1", "a", 256), vm("hog2", "a", 256), vm("idle1", "a", 1024),
           vm("idle2", "a", 1024)]  # fmt: skip
    for v in vms:
        v.power = "running"
    measured = {
        "hog1": VmDemand(cpu=0.9, ready=0.1, memory_mib=200),
        "hog2": VmDemand(cpu=0.8, ready=0.2, memory_mib=210),
        "idle1": VmDemand(cpu=0.02, ready=0.0, memory_mib=150),
        "idle2": VmDemand(cpu=0.03, ready=0.0, memory_mib=160),
    }
    return vms, {"a": NodeDemand(node="a", at=1000, window=60, vms=measured)}


def test_demand_moves_a_cpu_bound_guest_where_allocation_would_move_an_idle_one() -> None:
    vms, demand = busy_node_a()
    nodes = {n: node(n) for n in ("a", "b", "c")}
    by_vm = demand["a"].vms
    move = propose(node_loads(nodes, vms, demand), vms, 0.2, demand=by_vm)
    assert move is not None and move.vm.id in {"hog1", "hog2"} and move.target in {"b", "c"}
    assert move.dimension == "CPU demand" and "cores used" in move.explanation
    assert move.before > 0.9 and move.after < 0.6
    allocated = propose(node_loads(nodes, vms), vms, 0.2)
    assert allocated is not None and allocated.vm.id in {"idle1", "idle2"}
    # Applied until nothing helps: each guest wanting a core gets a node of its own, and the
    # idle guests, which want little, stay where they are.
    while move is not None:
        vms = [v.model_copy(update={"node": move.target}) if v.id == move.vm.id else v
               for v in vms]  # fmt: skip
        where = {n: NodeDemand(node=n, at=1000, window=60, vms={
            v.id: by_vm[v.id] for v in vms if v.node == n}) for n in nodes}  # fmt: skip
        move = propose(node_loads(nodes, vms, where), vms, 0.2, demand=by_vm)
    placed = {v.id: v.node for v in vms}
    assert placed["idle1"] == placed["idle2"] == "a"
    assert len({placed["hog1"], placed["hog2"], "a"}) == 3


def test_demand_leaves_an_unmeasured_vm_where_it_is() -> None:
    vms, demand = busy_node_a()
    nodes = {n: node(n) for n in ("a", "b")}
    known = {k: d for k, d in demand["a"].vms.items() if k.startswith("idle")}
    move = propose(node_loads(nodes, vms, demand), vms, 0.2, demand=known)
    assert move is None  # the hogs were not measured: idle guests do not lower CPU demand


def test_placement_avoids_a_node_measured_busy() -> None:
    vms, demand = busy_node_a()
    nodes = {"a": node("a"), "b": node("b")}
    vms = [vms[0], vm("big", "b", 1024).model_copy(update={"power": "running"})]
    assert choose_node(node_loads(nodes, vms), 256, 1) == "a"  # less memory given
    assert choose_node(node_loads(nodes, vms, demand), 256, 1) == "b"  # a's cores are busy


async def test_assess_balances_allocated_memory_until_every_busy_node_was_measured() -> None:
    db = FakeConfigDB()
    for name in ("a", "b", "c"):
        await db.put(keys.node(name), node(name))
    vms, demand = busy_node_a()
    for v in vms:
        await db.put(keys.vm(v.id), v)
        await db.put(keys.vm_status(v.id), VMStatus(state="running", node="a", updated_at=1))
    inventory = await Inventory(db).ready()
    try:
        drs = DRSSettings(threshold=0.2)
        first = assess(inventory, drs, now=1000)
        assert first.basis == "allocated" and first.note is not None and "from a" in first.note
        assert first.move is not None and first.move.vm.id.startswith("idle")
        await inventory.demand.wait_for(await db.put(keys.demand("a"), demand["a"]))
        measured = assess(inventory, drs, now=1010)
        assert measured.basis == "demand" and measured.note is None
        assert measured.move is not None and measured.move.vm.id.startswith("hog")
        stale = assess(inventory, drs, now=1000 + 91)  # three half-minute writes missed
        assert stale.basis == "allocated"
    finally:
        await inventory.stop()


def test_a_migrated_vm_counts_where_it_runs_with_its_newest_figures() -> None:
    """Its source's record still holds it (a minute's window), its target's not yet or
    already: either way its demand is counted on the node it runs on now."""
    vms, demand = busy_node_a()
    moved = [v.model_copy(update={"node": "b"}) if v.id == "hog1" else v for v in vms]
    nodes = {n: node(n) for n in ("a", "b")}
    before = {load.name: load for load in node_loads(nodes, moved, demand)}
    assert round(before["b"].cpu_demand, 2) == 1.0 and round(before["a"].cpu_demand, 2) == 1.05
    newer = NodeDemand(node="b", at=1030, window=60,
                       vms={"hog1": VmDemand(cpu=0.5, ready=0, memory_mib=220)})  # fmt: skip
    after = {load.name: load for load in node_loads(nodes, moved, {**demand, "b": newer})}
    assert after["b"].cpu_demand == 0.5 and after["b"].memory_demand_mib == 220
