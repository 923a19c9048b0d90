"""Maintenance: a node with five VMs is drained by live migration; none of them stops."""

import re
from pathlib import Path

from support import guest_intact, serial_lines, wait_for

BOOT = 180


def ticks(log: Path) -> list[int]:
    return [
        int(m.group(1))
        for line in serial_lines(log, r"heron-tick \d+")
        if (m := re.search(r"heron-tick (\d+)", line))
    ]


def test_drain_moves_every_vm_and_stops_none(cluster3, api, testguest) -> None:
    cluster, _ = cluster3
    shared = Path(cluster.dir) / "shared"
    shared.mkdir()
    api.ok("POST", "/pools", json={"name": "shared", "path": str(shared), "shared": True})
    api.wait_task(
        api.ok("POST", "/pools/shared/volumes/import", json={"name": "tg", "path": str(testguest)})[
            "task"
        ]
    )
    victim = "node1"
    vms = []
    for i in range(5):
        reply = api.ok(
            "POST",
            "/vms",
            json={
                "name": f"busy{i}",
                "memory_mib": 128,
                "node": victim,
                "start": True,
                "disks": [{"pool": "shared", "source": "shared/tg"}],
            },
        )
        api.wait_task(reply["task"])
        vms.append(reply["vm"])
    stopped = api.ok(
        "POST",
        "/vms",
        json={
            "name": "idle",
            "memory_mib": 128,
            "node": victim,
            "disks": [{"pool": "shared", "size": 1 << 20}],
        },
    )
    api.wait_task(stopped["task"])
    logs = {v: Path(cluster.node(victim).state_dir) / "vms" / v / "console.log" for v in vms}
    for log in logs.values():
        wait_for(lambda log=log: ticks(log), BOOT, "the guests to tick")
    seen = {vm_id: ticks(log)[-1] for vm_id, log in logs.items()}

    reply = api.ok("POST", f"/nodes/{victim}/maintenance/enter")
    task = api.wait_task(reply["task"], timeout=300)
    assert len(task["result"]["moved"]) == 6
    node = {n["name"]: n for n in api.ok("GET", "/nodes")}[victim]
    assert node["state"] == "maintenance" and node["vms"] == 0
    for vm_id in [*vms, stopped["vm"]]:
        assert api.vm(vm_id)["node"] != victim
    for vm_id in vms:
        vm = api.vm(vm_id)
        assert vm["state"] == "running"
        log = Path(cluster.node(vm["node"]).state_dir) / "vms" / vm_id / "console.log"
        guest_intact(log, last_tick=seen[vm_id])

    # New VMs stay off a node in maintenance, until it leaves maintenance.
    refused = api.post("/vms", json={"name": "late", "memory_mib": 128, "node": victim})
    assert refused.status_code == 409
    placed = [
        api.ok("POST", "/vms", json={"name": f"new{i}", "memory_mib": 16})["vm"] for i in range(4)
    ]
    assert victim not in {api.vm(v)["node"] for v in placed}
    api.ok("POST", f"/nodes/{victim}/maintenance/exit")
    later = api.ok("POST", "/vms", json={"name": "after", "memory_mib": 16})["vm"]
    assert api.vm(later)["node"] == victim  # the emptiest node again
