"""etcd grows with the cluster (1 -> 3 -> 5 voters) and shrinks when nodes leave, while a
VM keeps running and the API keeps answering."""

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Api, wait_for

from heron import devcluster
from heron.configdb.membership import Member, Membership
from heron.devcluster import DevCluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DevCluster, str]]:
    with devcluster.running(tmp_path_factory.mktemp("growth"), 1, embedded=True) as made:
        yield made


def members(cluster: DevCluster) -> list[Member]:
    async def read() -> list[Member]:
        async with cluster.configdb() as db:
            return await Membership(db).list()

    return asyncio.run(read())


def voters(cluster: DevCluster) -> set[str]:
    return {m.name for m in members(cluster) if m.started and not m.learner}


def test_etcd_grows_to_five_voters_and_shrinks(cluster) -> None:
    dev, token = cluster
    api = Api(dev.nodes[0].url, token, dev.tls())
    assert voters(dev) == {"node1"}
    vm = api.ok("POST", "/vms", json={"name": "steady", "memory_mib": 64, "start": True})
    api.wait_task(vm["task"])
    pid = api.vm(vm["vm"])["status"]["pid"]

    dev.add_node()
    dev.add_node()
    wait_for(lambda: voters(dev) == {"node1", "node2", "node3"}, 90, "three voters")
    dev.add_node()
    assert len(voters(dev)) == 3  # four nodes: still three voters (an odd number)
    dev.add_node()
    wait_for(lambda: len(voters(dev)) == 5, 90, "five voters")
    events = api.ok("GET", "/events", params={"limit": 500})
    assert sum("promoted etcd member" in (e.get("reason") or "") for e in events) == 4

    for leaving, left in (("node5", 4), ("node4", 3)):
        reply = api.ok("POST", f"/nodes/{leaving}/leave")
        assert reply["etcd_member_removed"] is True
        wait_for(lambda n=left: len(members(dev)) == n, 30, f"{left} members")
        member_dir = Path(dev.node(leaving).state_dir) / "etcd"
        wait_for(lambda d=member_dir: not d.exists(), 30, "the member's data to be removed")
    assert voters(dev) == {"node1", "node2", "node3"}
    # The VM never stopped, and the cluster still answers writes.
    assert api.vm(vm["vm"])["status"]["pid"] == pid and os.path.exists(f"/proc/{pid}")
    assert api.post("/vms", json={"name": "later", "memory_mib": 16}).status_code == 202
    assert api.post("/nodes/node1/leave").status_code == 409  # it still runs a VM

    # Every agent was started knowing only node1's member; they follow etcd's membership, so
    # when node1 dies as a whole (agent, VM, its etcd member) the others carry on through the
    # two surviving voters: their leases hold, the API answers, node1 is seen as failed.
    for name in ("node2", "node3"):
        saved = Path(dev.node(name).state_dir) / "etcd-endpoints.json"
        wait_for(lambda s=saved: s.exists() and len(json.loads(s.read_text())) == 3, 30,
                 f"{name} to follow etcd's three voters")  # fmt: skip
    survivor = Api(dev.node("node2").url, token, dev.tls())
    [first] = [m for m in dev.members() if m.name == "node1"]
    etcd_pid = first.pid()
    assert etcd_pid is not None

    def fence_logs() -> dict[str, str]:
        found = {}
        for node in dev.nodes[1:]:
            path = Path(node.state_dir) / "fence.log"
            found[node.name] = path.read_text(errors="replace") if path.exists() else ""
        return found

    before = fence_logs()
    dev.kill_node("node1")
    os.kill(etcd_pid, signal.SIGKILL)

    def node1_gone() -> bool:
        reply = survivor.get("/nodes")
        return reply.status_code == 200 and "node1" not in {n["name"] for n in reply.json()}

    wait_for(node1_gone, 30, "node1's lease to expire, seen through the surviving members")
    nodes = {n["name"]: n for n in survivor.ok("GET", "/nodes")}
    assert set(nodes) == {"node2", "node3", "node4", "node5"}  # 4 and 5 left etcd only
    # Their leases were renewed all along: no fence watchdog saw a renewal missing.
    for name, text in fence_logs().items():
        assert "no lease renewal" not in text[len(before[name]) :], (name, before[name], text)
    assert survivor.post("/vms", json={"name": "after-node1", "memory_mib": 16}).status_code == 202
    # A dead node is still known by its etcd member: leave refuses only because of its VM.
    refused = survivor.post("/nodes/node1/leave")
    assert refused.status_code == 409 and "steady" in refused.json()["message"], refused.text
