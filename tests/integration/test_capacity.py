"""The datasheet's HA arithmetic on a real 4-node devcluster, down to pending-restart.

4 nodes at 50 % -> one fails -> about 66 % -> another fails -> 100 % -> another fails ->
VMs wait as pending with the reason, and start when a node comes back. Nodes offer 1 GiB
each to VMs; the VMs have no disks (QEMU runs its firmware only), so sixteen of them cost
little CPU on this machine.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Api, wait_for

from heron import devcluster
from heron.devcluster import DevCluster

NODE_MIB, VM_MIB = 1024, 128


@pytest.fixture(scope="module")
def cluster4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DevCluster, str]]:
    with devcluster.running(tmp_path_factory.mktemp("cluster4"), 4, memory_mib=NODE_MIB) as made:
        yield made


def usage(api: Api) -> dict[str, float]:
    return {n["name"]: n["memory_used_mib"] / n["memory_mib"] for n in api.ok("GET", "/nodes")}


def settled(api: Api, dead: set[str]) -> list[dict]:
    """Every VM, once none of them is still on a dead node or starting."""
    vms = api.ok("GET", "/vms")
    moving = [
        v
        for v in vms
        if v["state"] not in ("running", "pending")
        or (v["node"] in dead and v["state"] != "pending")
    ]
    return [] if moving else vms


def test_four_nodes_at_half_load_lose_three(cluster4: tuple[DevCluster, str]) -> None:
    cluster, token = cluster4
    api = Api(cluster.node("node1").url, token, cluster.tls())  # node1 survives to the end
    for i in range(16):
        reply = api.ok(
            "POST",
            "/vms",
            json={
                "name": f"ha{i:02}",
                "memory_mib": VM_MIB,
                "start": True,
                "ha": {"enabled": True},
            },
        )
        api.wait_task(reply["task"])
    assert set(usage(api).values()) == {0.5}

    dead: set[str] = set()
    expected = [{"min": 0.62, "max": 0.76}, {"min": 1.0, "max": 1.0}]
    for victim, bounds in zip(("node4", "node3"), expected, strict=True):
        cluster.kill_node(victim)
        dead.add(victim)
        vms = wait_for(lambda d=frozenset(dead): settled(api, set(d)), 60, "HA to settle")
        assert all(v["state"] == "running" for v in vms)
        loads = {n: u for n, u in usage(api).items() if n not in dead}
        assert bounds["min"] <= min(loads.values()) and max(loads.values()) <= bounds["max"]
        assert abs(sum(loads.values()) / len(loads) - 16 * VM_MIB / (NODE_MIB * len(loads))) < 1e-9

    cluster.kill_node("node2")
    dead.add("node2")
    vms = wait_for(lambda: settled(api, dead), 60, "HA to settle with too little capacity")
    pending = [v for v in vms if v["state"] == "pending"]
    assert len(pending) == 8 and usage(api) == {"node1": 1.0}
    assert all("capacity" in v["status"]["message"] for v in pending)
    events = api.ok("GET", "/events", params={"limit": 1000})
    assert {e["target"] for e in events if e.get("result") == "pending"} >= {
        v["id"] for v in pending
    }

    # Capacity returns: the pending VMs start on the node that came back.
    cluster.start_node("node4")
    dead.discard("node4")
    vms = wait_for(
        lambda: (vms := settled(api, dead)) and all(v["state"] == "running" for v in vms) and vms,
        120,
        "pending VMs to start",
    )
    assert {v["node"] for v in vms} == {"node1", "node4"}
    assert usage(api) == {"node1": 1.0, "node4": 1.0}
    assert Path(cluster.node("node4").state_dir).exists()
