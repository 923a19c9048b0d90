"""The HA planner: restart order, capacity, and the datasheet's arithmetic."""

from heron.ha.planner import plan_restarts
from heron.models.vm import VM, DiskSpec, HAPolicy, VMSpec
from heron.scheduler.placement import NodeLoad


def vm(name: str, memory: int = 512, priority: int = 50, disks: tuple[str, ...] = ()) -> VM:
    spec = VMSpec(
        name=name,
        memory_mib=memory,
        ha=HAPolicy(enabled=True, priority=priority),
        disks=[DiskSpec(volume=d) for d in disks],
    )
    return VM(id=name, spec=spec, node="dead", created_at=0)


def test_highest_priority_first_and_capacity_counted_as_it_goes() -> None:
    nodes = [NodeLoad("a", cpus=4, memory_mib=1024)]
    plan = plan_restarts([vm("low", priority=10), vm("high", priority=90), vm("mid")], nodes, set())
    assert [(v.spec.name, n) for v, n in plan.moves] == [("high", "a"), ("mid", "a")]
    assert [v.spec.name for v, _ in plan.pending] == ["low"]
    assert "capacity" in plan.pending[0][1]


def test_local_disks_cannot_follow_and_shared_ones_can() -> None:
    nodes = [NodeLoad("a", cpus=4, memory_mib=4096)]
    plan = plan_restarts(
        [vm("local", disks=("v1",)), vm("shared", disks=("v2",))], nodes, shared_volumes={"v2"}
    )
    assert [v.spec.name for v, _ in plan.moves] == ["shared"]
    assert "local storage" in plan.pending[0][1]


def test_the_datasheet_arithmetic_four_nodes_at_half_load() -> None:
    """4 nodes at 50 %: one fails -> about 66 %; another fails -> 100 %; then pending."""
    capacity, per_vm = 1200, 100
    names = ["n1", "n2", "n3", "n4"]
    placed = {n: [vm(f"{n}-{i}", memory=per_vm) for i in range(6)] for n in names}  # 50 %

    def fail(dead: str) -> tuple[dict[str, float], list[str]]:
        survivors = [n for n in placed if n != dead]
        loads = [
            NodeLoad(n, cpus=64, memory_mib=capacity, memory_used_mib=per_vm * len(placed[n]))
            for n in survivors
        ]
        plan = plan_restarts(placed.pop(dead), loads, set())
        for moved, target in plan.moves:
            placed[target].append(moved)
        usage = {n: per_vm * len(placed[n]) / capacity for n in survivors}
        return usage, [v.spec.name for v, _ in plan.pending]

    usage, pending = fail("n1")
    assert not pending and all(abs(u - 2 / 3) < 0.01 for u in usage.values())
    usage, pending = fail("n2")
    assert not pending and all(u == 1.0 for u in usage.values())
    usage, pending = fail("n3")
    assert len(pending) == 12 and usage == {"n4": 1.0}
