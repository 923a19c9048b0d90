"""The balancer: one move at a time, only when it helps, never a ping-pong."""

from heron.models.group import VMGroup
from heron.models.vm import VM, VMSpec
from heron.scheduler.balancer import propose, spread
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
