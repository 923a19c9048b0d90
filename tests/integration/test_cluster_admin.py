"""What an administrator reads and does about the cluster as a whole, on a real devcluster:
etcd's members, the join instructions, DRS's status with its proposal and decisions, and a
node's leave with its plan first (the plan changes nothing; the leave refuses its blockers)."""

from support import Api, wait_for

from heron.devcluster import DevCluster


def test_members_and_join_instructions(cluster3: tuple[DevCluster, str], api: Api) -> None:
    members = api.ok("GET", "/cluster/members")
    # The devcluster runs etcd apart from its agents: members etcd1..3.
    assert sorted(m["name"] for m in members) == ["etcd1", "etcd2", "etcd3"]
    assert not any(m["learner"] for m in members)
    assert sum(m["leader"] for m in members) == 1
    join = api.ok("GET", "/cluster/join")
    assert len(join["etcd_endpoints"]) == 3
    assert ",".join(join["etcd_endpoints"]) in join["commands"][0]["command"]


def test_drs_shows_its_proposal_then_its_decision(api: Api) -> None:
    # Host-sized nodes: two small VMs on node1 make a spread of about 0.5 % of their memory.
    for i in range(2):
        reply = api.ok(
            "POST", "/vms", json={"name": f"d{i}", "memory_mib": 64, "node": "node1", "start": True}
        )
        api.wait_task(reply["task"])
    settings = {"drs": {"enabled": False, "threshold": 0.001, "interval": 0.5, "hysteresis": 1}}
    api.ok("PUT", "/cluster/settings", json=settings)
    status = api.ok("GET", "/cluster/drs")
    assert status["exceeded"] and status["spread"] > 0.001
    assert [n["node"] for n in status["loads"]] == ["node1", "node2", "node3"]
    proposal = status["proposal"]
    assert proposal["source"] == "node1" and "brings it to" in proposal["explanation"]
    assert status["decisions"] == []  # disabled: it proposes, and does nothing
    advise = {k: v for k, v in settings["drs"].items() if k != "enabled"} | {"mode": "advise"}
    assert api.ok("PUT", "/cluster/settings", json={"drs": advise})["drs"]["enabled"] is False
    refused = api.put("/cluster/settings", json={"drs": {**advise, "enabled": True}})
    assert refused.status_code == 422 and "contradicts" in refused.text
    assert refused.json()["fields"][0]["field"] == "body.drs"
    assert api.ok("GET", "/cluster/drs")["settings"]["mode"] == "advise"

    api.ok("PUT", "/cluster/settings", json={"drs": {**settings["drs"], "enabled": True}})
    wait_for(lambda: api.ok("GET", "/cluster/drs")["decisions"], 60, "a DRS decision")
    api.ok("PUT", "/cluster/settings", json=settings)
    [decision] = api.ok("GET", "/cluster/drs")["decisions"]
    assert decision["source"] == "node1" and decision["vm_name"] in {"d0", "d1"}
    assert decision["reason"].startswith("memory load spread") and decision["task"]
    assert api.ok("GET", "/cluster/drs/decisions", params={"limit": 1}) == [decision]
    api.wait_task(decision["task"])


def test_leave_says_what_it_would_do_and_refuses_what_blocks(
    cluster3: tuple[DevCluster, str], api: Api
) -> None:
    dry = {"dry_run": True}
    blocked = api.ok("POST", "/nodes/node1/leave", json=dry)
    plan = blocked["plan"]
    assert blocked["dry_run"] and not plan["can_leave"] and not plan["etcd_member"]
    assert plan["vms"] and [b["kind"] for b in plan["blockers"]] == ["vms"]
    refused = api.post("/nodes/node1/leave")
    assert refused.status_code == 409 and plan["blockers"][0]["message"] in refused.text

    # DRS moved a VM to node2 or node3 (test above): the other one is empty.
    taken = {v["node"] for v in api.ok("GET", "/vms")}
    empty = next(n for n in ("node3", "node2") if n not in taken)
    # Data on it: a replicated ardfs volume over every node's disk, and a node-local volume.
    api.ok("POST", "/pools", json={"name": "hci", "type": "ardfs", "protection": "rf2"})
    for node in cluster3[0].nodes:
        api.ok("POST", "/pools/hci/disks", json={"node": node.name, "path": f"{node.state_dir}/d0"})
    for pool, body in (("hci", {}), ("local", {"node": empty})):
        reply = api.ok(
            "POST", f"/pools/{pool}/volumes", json={"name": "data", "size": 2**24, **body}
        )
        api.wait_task(reply["task"], timeout=180)

    free = api.ok("POST", f"/nodes/{empty}/leave", json=dry)
    assert free["plan"]["can_leave"] and not free["etcd_member_removed"]
    [hci] = free["plan"]["ardfs"]
    assert (hci["pool"], hci["outcome"], hci["volumes"], hci["disks_left"]) == (
        "hci",
        "rebuilt",
        1,
        2,
    )
    assert [(v["pool"], v["name"]) for v in free["plan"]["local_volumes"]] == [("local", "data")]
    assert len(api.ok("GET", "/cluster/members")) == 3  # the dry run changed nothing
    assert api.post("/nodes/nowhere/leave", json=dry).status_code == 404
    assert api.post(f"/nodes/{empty}/leave", json={"dry_run": 1, "x": 2}).status_code == 422

    assert api.ok("GET", f"/nodes/{empty}")["state"] == "online"
    done = api.ok("POST", f"/nodes/{empty}/leave")
    assert not done["etcd_member_removed"] and not done["dry_run"]
    node = api.ok("GET", f"/nodes/{empty}")
    assert node["state"] == "maintenance" and node["left"]  # out of placement for good
    refused = api.post(f"/nodes/{empty}/maintenance/exit")
    assert refused.status_code == 409 and "left the cluster" in refused.text
