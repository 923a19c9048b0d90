"""Dynamic balancing on a real devcluster: an uneven cluster evens out by live migration,
each decision explained in the audit log, and it stops when a move would not help."""

import time
from collections import Counter
from collections.abc import Iterator

import pytest
from support import Api, wait_for

from heron import devcluster
from heron.devcluster import DevCluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DevCluster, str]]:
    directory = tmp_path_factory.mktemp("drs")
    cluster, token = devcluster.up(directory, 3, memory_mib=1024)
    try:
        yield cluster, token
    finally:
        devcluster.down(directory)


def test_an_uneven_cluster_is_balanced(cluster) -> None:
    dev, token = cluster
    api = Api(dev.nodes[0].url, token, dev.tls())
    # Four running VMs (no disks: only their firmware runs), all on node1: 50 % / 0 / 0.
    for i in range(4):
        reply = api.ok(
            "POST",
            "/vms",
            json={"name": f"w{i}", "memory_mib": 128, "node": "node1", "start": True},
        )
        api.wait_task(reply["task"])
    assert api.ok("GET", "/cluster/settings")["drs"]["enabled"] is False
    api.ok(
        "PUT",
        "/cluster/settings",
        json={"drs": {"enabled": True, "threshold": 0.1, "interval": 0.5, "hysteresis": 2}},
    )

    def placement() -> Counter[str]:
        vms = api.ok("GET", "/vms")
        if any(v["state"] != "running" for v in vms):
            return Counter()
        return Counter(v["node"] for v in vms)

    wait_for(lambda: sorted(placement().values()) == [1, 1, 2], 90, "DRS to balance")

    def decisions() -> list[dict]:
        events = api.ok("GET", "/events", params={"limit": 500})
        return [e for e in events if e.get("user") == "drs"]

    assert len(decisions()) == 2
    assert all("from node1" in e["reason"] and "brings it to" in e["reason"] for e in decisions())
    # Balanced as far as single moves go: several more checks pass and nothing moves.
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:  # an observation window, not synchronisation
        assert len(decisions()) == 2
        time.sleep(0.25)
    for vm in api.ok("GET", "/vms"):
        assert vm["state"] == "running"
    api.ok("PUT", "/cluster/settings", json={"drs": {"enabled": False}})
