"""The balancer: one move at a time, only when it helps, never a ping-pong."""

from fakes.configdb import FakeConfigDB

from heron.configdb import keys
from heron.models.group import VMGroup
from heron.models.node import Node
from heron.models.snapshot import Snapshot, SnapshotDisk, new_snapshot_id
from heron.models.storage import Pool, Volume
from heron.models.vm import VM, DiskSpec, VMSpec, VMStatus
from heron.scheduler.balancer import propose, spread
from heron.scheduler.drs import assess
from heron.scheduler.inventory import Inventory
from heron.scheduler.placement import NodeLoad


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
        assert assess(inventory, 0.2).move is not None
        disk = SnapshotDisk(index=0, volume="vol-x", pool="local", method="qcow2")
        taken = Snapshot(id=new_snapshot_id(), vm="x", name="s", disks=[disk], created_at=1)
        await inventory.snapshots.wait_for(await db.put(keys.snapshot("x", taken.id), taken))
        move = assess(inventory, 0.2).move
        assert move is not None and move.vm.id == "y"
        on_y = disk.model_copy(update={"volume": "vol-y"})
        also = Snapshot(id=new_snapshot_id(), vm="y", name="s", disks=[on_y], created_at=1)
        await inventory.snapshots.wait_for(await db.put(keys.snapshot("y", also.id), also))
        assert assess(inventory, 0.2).move is None
    finally:
        await inventory.stop()
