"""etcd grows with the cluster (1 -> 3 -> 5 voters) and shrinks when nodes leave, while a
VM keeps running and the API keeps answering."""

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Api, wait_for

from heron import devcluster
from heron.configdb import ConfigDB
from heron.configdb.membership import Member, Membership
from heron.devcluster import DevCluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DevCluster, str]]:
    directory = tmp_path_factory.mktemp("growth")
    cluster, token = devcluster.up(directory, 1, embedded=True)
    try:
        yield cluster, token
    finally:
        devcluster.down(directory)


def members(cluster: DevCluster) -> list[Member]:
    async def read() -> list[Member]:
        async with ConfigDB(cluster.endpoints) as db:
            return await Membership(db).list()

    return asyncio.run(read())


def voters(cluster: DevCluster) -> set[str]:
    return {m.name for m in members(cluster) if m.started and not m.learner}


def test_etcd_grows_to_five_voters_and_shrinks(cluster) -> None:
    dev, token = cluster
    api = Api(dev.nodes[0].url, token)
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
