"""Cores and memory reserved for the storage data path: heron-io runs on the reserved cores,
every QEMU thread on the others, and placement counts only what is left for VMs."""

import os
from pathlib import Path

import pytest
from support import Api, wait_for

from heron.agent.reservation import split_cores

pytestmark = pytest.mark.integration


def affinity(pid: int) -> set[int]:
    """The cores every thread of `pid` may run on (if they all agree)."""
    try:
        seen = [os.sched_getaffinity(int(t)) for t in os.listdir(f"/proc/{pid}/task")]
    except (FileNotFoundError, ProcessLookupError):
        return set()  # gone (e.g. heron-io restarted for a membership change)
    return set().union(*seen) if all(s == seen[0] for s in seen) else {-1}


def test_heron_io_and_vms_on_separate_cores(cluster1, testguest) -> None:
    cluster, token = cluster1
    api = Api(cluster.nodes[0].url, token, cluster.tls())
    node = api.ok("GET", "/nodes/node1")
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("one core: nothing to reserve")
    io_cores, vm_cores = split_cores(cores, 1)

    refused = api.put("/nodes/node1/io", json={"cpus": node["cpus"], "memory_mib": 0})
    assert refused.status_code == 422 and refused.json()["fields"][0]["field"] == "body.cpus"
    api.ok("PUT", "/nodes/node1/io", json={"cpus": 1, "memory_mib": node["memory_mib"] - 200})
    node = api.ok("GET", "/nodes/node1")
    assert (node["io_cpus"], node["io_memory_mib"]) == (1, node["memory_mib"] - 200)
    # Placement sees 200 MiB left for VMs.
    assert api.post("/vms", json={"name": "big", "memory_mib": 256}).status_code == 409
    # Maintenance keeps the reservation.
    api.wait_task(api.ok("POST", "/nodes/node1/maintenance/enter")["task"])
    api.ok("POST", "/nodes/node1/maintenance/exit")
    assert api.ok("GET", "/nodes/node1")["io_cpus"] == 1

    api.ok("POST", "/pools", json={"name": "hci", "type": "ardfs", "protection": "rf1"})
    disk = f"{cluster.nodes[0].state_dir}/ardfs-disk0"
    api.ok("POST", "/pools/hci/disks", json={"node": "node1", "path": disk})
    pidfile = Path(cluster.nodes[0].state_dir) / "ardfs/hci/heron-io.pid"
    wait_for(pidfile.exists, 30, "heron-io to start")

    def io_pid() -> int:
        return int(pidfile.read_text())

    wait_for(lambda: affinity(io_pid()) == io_cores, 30, "heron-io on the reserved core")

    reply = api.ok(
        "POST",
        "/vms",
        json={"name": "guest", "memory_mib": 128, "start": True,
              "disks": [{"pool": "hci", "size": 2**24}]},
    )  # fmt: skip
    api.wait_task(reply["task"], timeout=120)
    qemu_pid = api.vm(reply["vm"])["status"]["pid"]
    wait_for(lambda: affinity(qemu_pid) == vm_cores, 30, "every QEMU thread off that core")

    # Lifting the reservation lets both run anywhere again.
    api.ok("PUT", "/nodes/node1/io", json={"cpus": 0, "memory_mib": 0})
    wait_for(lambda: affinity(io_pid()) == set(cores), 30, "heron-io unpinned")
    wait_for(lambda: affinity(qemu_pid) == set(cores), 30, "QEMU unpinned")
