"""Placement (heron.scheduler.placement.choose_node): the least-loaded node that fits."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import pytest

from heron.scheduler.placement import NoCapacity, NodeLoad, choose_node


def node(name: str, **fields: object) -> NodeLoad:
    return NodeLoad(name=name, **{"cpus": 4, "memory_mib": 8192, **fields})


def place_many(nodes: list[NodeLoad], count: int, memory: int, vcpus: int) -> list[str]:
    """Place `count` VMs one after another, accounting each on its node as the agent would."""
    by_name = {n.name: n for n in nodes}
    chosen = []
    for _ in range(count):
        name = choose_node(list(by_name.values()), memory, vcpus)
        n = by_name[name]
        by_name[name] = replace(
            n,
            memory_used_mib=n.memory_used_mib + memory,
            vcpus_used=n.vcpus_used + vcpus,
            vms=n.vms + 1,
        )
        chosen.append(name)
    return chosen


def test_single_node_that_fits() -> None:
    assert choose_node([node("n1")], 512, 1) == "n1"


def test_spreads_over_equal_nodes() -> None:
    chosen = place_many([node("n1"), node("n2"), node("n3")], 9, 512, 1)
    assert sorted(chosen.count(n) for n in ("n1", "n2", "n3")) == [3, 3, 3]
    # Never two in a row on one node while another is emptier.
    assert chosen[:3] == ["n1", "n2", "n3"]


def test_vm_count_breaks_ties_between_equally_loaded_nodes() -> None:
    # Same memory and vCPU use, but n1 already holds more (smaller) VMs.
    nodes = [node("n1", vms=3, memory_used_mib=1024), node("n2", vms=1, memory_used_mib=1024)]
    assert choose_node(nodes, 512, 1) == "n2"


def test_prefers_the_less_loaded_node() -> None:
    nodes = [node("busy", memory_used_mib=6000), node("idle", memory_used_mib=1000)]
    assert choose_node(nodes, 512, 1) == "idle"


def test_load_is_relative_to_node_size() -> None:
    # 4 GiB used of 32 GiB beats 1 GiB used of 4 GiB.
    nodes = [
        node("small", memory_mib=4096, memory_used_mib=1024),
        node("big", memory_mib=32768, memory_used_mib=4096),
    ]
    assert choose_node(nodes, 512, 1) == "big"


def test_vcpu_load_counts_with_fourfold_overcommit() -> None:
    # Same memory; "a" has 15 of its 4x4=16 overcommitted vCPUs in use, "b" none.
    nodes = [node("a", vcpus_used=15), node("b")]
    assert choose_node(nodes, 512, 2) == "b"
    # The busier resource decides: "a" has more vCPUs in use, but less memory.
    nodes = [node("a", vcpus_used=1, memory_used_mib=1000), node("b", memory_used_mib=2000)]
    assert choose_node(nodes, 512, 1) == "a"


def test_respects_allowed() -> None:
    nodes = [node("n1"), node("n2", memory_used_mib=4096), node("n3")]
    assert choose_node(nodes, 512, 1, allowed={"n2"}) == "n2"
    assert choose_node(nodes, 512, 1, allowed={"n2", "n3"}) == "n3"


def test_allowed_naming_no_known_node() -> None:
    with pytest.raises(NoCapacity) as info:
        choose_node([node("n1")], 512, 1, allowed={"gone", "absent"})
    assert "absent, gone" in str(info.value)


def test_empty_allowed_set_allows_nothing() -> None:
    with pytest.raises(NoCapacity):
        choose_node([node("n1")], 512, 1, allowed=set())


def test_skips_maintenance() -> None:
    nodes = [node("drained", maintenance=True), node("loaded", memory_used_mib=7000)]
    assert choose_node(nodes, 512, 1) == "loaded"


def test_only_maintenance_nodes_is_no_capacity() -> None:
    with pytest.raises(NoCapacity) as info:
        choose_node([node("n1", maintenance=True)], 512, 1)
    assert "no node is available" in str(info.value)
    with pytest.raises(NoCapacity):
        choose_node([node("n1", maintenance=True), node("n2")], 512, 1, allowed={"n1"})


def test_no_nodes_is_no_capacity() -> None:
    with pytest.raises(NoCapacity):
        choose_node([], 512, 1)


def test_memory_must_fit() -> None:
    nodes = [node("n1", memory_used_mib=7800), node("n2", memory_mib=1024)]
    with pytest.raises(NoCapacity) as info:
        choose_node(nodes, 2048, 1)
    assert "2048 MiB" in str(info.value)
    # The only node with room wins even though it is the busier one in relative terms.
    nodes = [node("n1", memory_used_mib=6000), node("n2", memory_mib=1024)]
    assert choose_node(nodes, 2048, 1) == "n1"


def test_exact_fit_is_allowed() -> None:
    assert choose_node([node("n1", memory_used_mib=7680)], 512, 1) == "n1"
    with pytest.raises(NoCapacity):
        choose_node([node("n1", memory_used_mib=7681)], 512, 1)


def test_vcpus_alone_never_refuse_a_node() -> None:
    # vCPUs are overcommitted, not reserved: only memory is a hard limit.
    assert choose_node([node("n1", cpus=1, vcpus_used=64)], 512, 8) == "n1"


def test_fills_until_no_capacity() -> None:
    nodes = [node("n1", memory_mib=2048), node("n2", memory_mib=2048)]
    chosen = place_many(nodes, 8, 512, 1)
    assert sorted(chosen) == ["n1"] * 4 + ["n2"] * 4
    with pytest.raises(NoCapacity):
        place_many(nodes, 9, 512, 1)


def test_tie_break_is_by_name_whatever_the_order() -> None:
    nodes = [node(name) for name in ("n3", "n1", "n2")]
    for order in itertools.permutations(nodes):
        assert choose_node(list(order), 512, 1) == "n1"


def test_deterministic_for_any_order() -> None:
    rng = random.Random(7)
    nodes = [
        node(
            f"n{i}",
            memory_used_mib=rng.choice([0, 1024, 2048]),
            vcpus_used=rng.choice([0, 4]),
            vms=rng.choice([0, 1]),
        )
        for i in range(8)
    ]
    expected = choose_node(nodes, 512, 1)
    for _ in range(50):
        rng.shuffle(nodes)
        assert choose_node(nodes, 512, 1) == expected


def test_strict_spread_puts_one_member_per_node() -> None:
    from collections import Counter

    from heron.scheduler.placement import Affinity

    nodes = [NodeLoad(n, cpus=4, memory_mib=4096) for n in ("a", "b", "c")]
    rule = Affinity("db", "spread", strict=True, members_on=Counter({"a": 1, "b": 1}))
    assert choose_node(nodes, 128, 1, affinity=rule) == "c"
    full = Affinity("db", "spread", strict=True, members_on=Counter({"a": 1, "b": 1, "c": 1}))
    with pytest.raises(NoCapacity, match="group db"):
        choose_node(nodes, 128, 1, affinity=full)
    soft = Affinity("db", "spread", strict=False, members_on=Counter({"a": 1, "b": 1, "c": 1}))
    assert choose_node(nodes, 128, 1, affinity=soft) in {"a", "b", "c"}


def test_together_follows_the_first_member_even_onto_a_busier_node() -> None:
    from collections import Counter

    from heron.scheduler.placement import Affinity

    nodes = [
        NodeLoad("busy", cpus=4, memory_mib=4096, memory_used_mib=3000),
        NodeLoad("idle", cpus=4, memory_mib=4096),
    ]
    rule = Affinity("app", "together", strict=True, members_on=Counter({"busy": 2}))
    assert choose_node(nodes, 128, 1, affinity=rule) == "busy"
    first = Affinity("app", "together", strict=True)
    assert choose_node(nodes, 128, 1, affinity=first) == "idle"


def test_migration_target_named_is_checked_and_kept() -> None:
    from collections import Counter

    from heron.scheduler.placement import (
        Affinity,
        NotAllowed,
        UnknownNode,
        migration_target,
    )

    nodes = [node("a"), node("b"), node("c", maintenance=True), node("d")]
    assert migration_target(nodes, "a", 512, 1, requested="d") == "d"
    with pytest.raises(UnknownNode, match="no live node 'x'"):
        migration_target(nodes, "a", 512, 1, requested="x")
    with pytest.raises(UnknownNode, match="already runs on a"):
        migration_target(nodes, "a", 512, 1, requested="a")
    with pytest.raises(NotAllowed, match="maintenance"):
        migration_target(nodes, "a", 512, 1, requested="c")
    spread = Affinity("g", "spread", strict=True, members_on=Counter({"d": 1}))
    with pytest.raises(NotAllowed, match="spread rule forbids d"):
        migration_target(nodes, "a", 512, 1, spread, requested="d")


def test_migration_target_chosen_is_never_the_source() -> None:
    from heron.scheduler.placement import migration_target

    nodes = [node("a"), node("b", memory_used_mib=4096)]
    assert migration_target(nodes, "a", 512, 1) == "b"
    with pytest.raises(NoCapacity):
        migration_target([node("a")], "a", 512, 1)
