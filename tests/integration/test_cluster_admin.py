"""What an administrator reads and does about the cluster as a whole, on a real devcluster:
etcd's members, the join instructions, DRS's status with its proposal and decisions, login
protection (a lock counted on one node holds on the others), password rules and changes,
scoped tokens, and a node's leave with its plan first (the plan changes nothing; the leave
refuses its blockers)."""

import time

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
    settings = {
        "drs": {
            "enabled": False,
            "basis": "allocated",  # measured demand needs half a minute of measurements
            "threshold": 0.001,
            "interval": 0.5,
            "hysteresis": 1,
        }
    }
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


def login(api: Api, user: str, password: str, url: str | None = None) -> tuple[int, dict]:
    """Log in as `user` through `url` (default: `api`'s node), trusting `api`'s CA."""
    reply = Api(url or api.url, None, api.tls).post(
        "/auth/login", json={"username": user, "password": password}
    )
    return reply.status_code, reply.json()


def test_a_settings_change_keeps_the_sections_it_leaves_out(api: Api) -> None:
    before = api.ok("GET", "/cluster/settings")
    ha = {**before["ha"], "agent_grace": before["ha"]["agent_grace"] + 5}
    assert api.ok("PUT", "/cluster/settings", json={"ha": ha})["ha"] == ha
    # Another admin (an older CLI, a DRS script) changes DRS alone: HA stays as just set.
    drs = {k: v for k, v in before["drs"].items() if k != "enabled"} | {"threshold": 0.3}
    after = api.ok("PUT", "/cluster/settings", json={"drs": drs})
    assert after["ha"] == ha and after["drs"]["threshold"] == 0.3
    assert after["login"] == before["login"] and after["support"] == before["support"]
    assert api.ok("PUT", "/cluster/settings", json={}) == after  # nothing given, nothing changed
    api.ok("PUT", "/cluster/settings", json=before)


def test_failed_logins_lock_a_name_on_every_node_until_lifted(
    cluster3: tuple[DevCluster, str], api: Api
) -> None:
    urls = [node.url for node in cluster3[0].nodes]
    settings = api.ok("GET", "/cluster/settings")
    rules = {"max_failures": 3, "max_failures_per_address": 1000, "lockout": 600}
    api.ok("PUT", "/cluster/settings", json={**settings, "login": rules})
    api.ok("POST", "/users", json={"name": "lena", "role": "viewer", "password": "lenas-pw-1"})
    # Three failures, each on another node: the count is the cluster's, not a node's.
    for url in urls:
        assert login(api, "lena", "guess", url)[0] == 401
    status, body = login(api, "lena", "lenas-pw-1", urls[0])  # the right password, but locked
    assert status == 429 and body["error"] == "locked" and "user lena" in body["message"]
    [lock] = [r for r in api.ok("GET", "/lockouts") if r["subject"] == "lena"]
    assert lock["kind"] == "user" and lock["failures"] == 3 and lock["locked_until"] > time.time()
    audit = api.ok("GET", "/events", params={"limit": 200})
    assert any(e.get("result") == "locked" and e.get("target") == "user:lena" for e in audit)
    failures = [e for e in audit if e.get("user") == "lena" and e.get("status") == 401]
    assert len(failures) == 3  # each failed login is audited, on the node that refused it

    api.ok("DELETE", f"/lockouts/{lock['id']}")
    assert login(api, "lena", "lenas-pw-1", urls[1])[0] == 200
    assert api.delete(f"/lockouts/{lock['id']}").status_code == 404
    # A name nobody has counts the same: a lock says nothing about which names exist.
    assert login(api, "nobody-here", "guess", urls[2])[0] == 401
    [unknown] = [r for r in api.ok("GET", "/lockouts") if r["subject"] == "nobody-here"]
    assert unknown["kind"] == "user" and unknown["failures"] == 1
    api.ok("PUT", "/cluster/settings", json=settings)


def test_password_rules_and_a_new_password_ends_sessions(api: Api) -> None:
    user = {"name": "olga-ivanova", "role": "operator", "password": "Olga-Ivanova"}
    refused = api.post("/users", json=user)
    assert refused.status_code == 422 and refused.json()["fields"][0]["field"] == "body.password"
    assert "user name" in refused.text
    settings = api.ok("GET", "/cluster/settings")
    api.ok("PUT", "/cluster/settings", json={**settings, "login": {"min_password_length": 12}})
    refused = api.post("/users", json={**user, "name": "olga", "password": "eleven-char"})
    assert refused.status_code == 422 and "at least 12" in refused.text
    api.ok("POST", "/users", json={**user, "name": "olga", "password": "olgas-pw-12c"})

    olga = Api(api.url, login(api, "olga", "olgas-pw-12c")[1]["token"], api.tls)
    # Tokens scoped by role: never above the caller's own, and optionally expiring.
    too_high = olga.post("/tokens", json={"role": "admin"})
    assert too_high.status_code == 422 and too_high.json()["fields"][0]["field"] == "body.role"
    monitor = olga.ok("POST", "/tokens", json={"role": "viewer", "expires_in_days": 2})
    assert monitor["role"] == "viewer"
    assert abs(monitor["expires_at"] - (time.time() + 2 * 86400)) < 300
    reader = Api(api.url, monitor["token"], api.tls)
    assert reader.ok("GET", "/auth/whoami")["role"] == "viewer"
    assert reader.post("/groups", json={"name": "by-token"}).status_code == 403
    automation = Api(
        api.url, olga.ok("POST", "/tokens", json={"description": "ci"})["token"], api.tls
    )

    wrong = olga.put("/users/olga/password", json={"password": "new-pw-olga-1"})
    assert wrong.status_code == 422 and "current_password" in wrong.text
    wrong = olga.put(
        "/users/olga/password",
        json={"password": "new-pw-olga-1", "current_password": "not-it"},
    )
    assert (
        wrong.status_code == 422 and wrong.json()["fields"][0]["field"] == "body.current_password"
    )
    assert olga.put("/users/admin/password", json={"password": "x" * 12}).status_code == 403
    changed = olga.ok(
        "PUT",
        "/users/olga/password",
        json={"password": "new-pw-olga-1", "current_password": "olgas-pw-12c"},
    )
    assert changed["revoked"] == 3  # her session and both API tokens
    for ended in (olga, reader, automation):
        assert ended.get("/auth/whoami").status_code == 401
    assert login(api, "olga", "olgas-pw-12c")[0] == 401
    second = Api(api.url, login(api, "olga", "new-pw-olga-1")[1]["token"], api.tls)
    kept = Api(
        api.url, second.ok("POST", "/tokens", json={"description": "kept"})["token"], api.tls
    )
    # An administrator sets it without the old one, and may keep the API tokens.
    reply = api.ok(
        "PUT", "/users/olga/password", json={"password": "third-pw-olga", "keep_api_tokens": True}
    )
    assert reply["revoked"] == 1
    assert second.get("/auth/whoami").status_code == 401
    assert kept.ok("GET", "/auth/whoami")["user"] == "olga"
    api.ok("PUT", "/cluster/settings", json=settings)


def test_an_operator_of_one_group_reaches_its_vms_only(api: Api) -> None:
    vms = {}
    for vm, group in (("va", "ga"), ("vb", "gb")):
        api.ok("POST", "/groups", json={"name": group})
        made = api.ok("POST", "/vms", json={"name": vm, "memory_mib": 16, "group": group})
        api.wait_task(made["task"])
        vms[vm] = made["vm"]
    password = "scoped-pw-1"
    api.ok("POST", "/users", json={"name": "gina", "role": "viewer", "password": password})
    api.ok("POST", "/users", json={"name": "nora", "role": None, "password": password})
    grants = {
        user: api.ok(
            "POST",
            "/grants",
            json={"user": user, "role": "operator", "scope": "group", "name": "ga"},
        )
        for user in ("gina", "nora")
    }
    bad = {"user": "nobody", "role": "operator", "scope": "group", "name": "ga"}
    refused = api.post("/grants", json=bad)
    assert refused.status_code == 422 and refused.json()["fields"][0]["field"] == "body.user"
    refused = api.post("/grants", json={**bad, "user": "gina", "name": "nope"})
    assert refused.status_code == 422 and refused.json()["fields"][0]["field"] == "body.name"
    assert api.post("/grants", json={**bad, "user": "gina"}).status_code == 409

    gina = Api(api.url, login(api, "gina", password)[1]["token"], api.tls)
    assert gina.post("/grants", json={**bad, "user": "gina", "name": "gb"}).status_code == 403
    # Cluster-wide viewer: sees every VM, but changes and opens the consoles of ga's only.
    assert {"va", "vb"} <= {v["name"] for v in gina.ok("GET", "/vms")}
    assert gina.patch("/vms/va", json={"description": "mine"}).status_code == 200
    for method, path, body in (
        ("PATCH", "/vms/vb", {"description": "not mine"}),
        ("GET", "/vms/vb/console/serial", None),
        ("POST", "/vms/vb/console/ticket", None),
        ("POST", "/vms/vb/actions/start", None),
        ("DELETE", "/vms/vb", None),
        ("POST", "/vms", {"name": "vx", "memory_mib": 16, "group": "gb"}),
        ("POST", "/vms", {"name": "vx", "memory_mib": 16}),  # in no group: cluster-wide only
        ("PATCH", "/vms/va", {"group": "gb"}),  # moving it into a group it does not operate
        ("POST", "/vms/va/disks", {"volume": "local/anything"}),  # another pool's data
    ):
        reply = gina.request(method, path, **({"json": body} if body is not None else {}))
        assert reply.status_code == 403, f"{method} {path}: {reply.status_code} {reply.text}"
    assert gina.ok("GET", "/vms/va/console/serial")["vm"] == vms["va"]
    assert gina.post("/vms/va/console/ticket").status_code == 201
    made = gina.ok("POST", "/vms", json={"name": "va2", "memory_mib": 16, "group": "ga"})
    api.wait_task(made["task"])
    assert api.vm("vb")["spec"]["description"] == ""

    # No cluster-wide role: only ga's VMs and their tasks exist for nora.
    nora = Api(api.url, login(api, "nora", password)[1]["token"], api.tls)
    assert sorted(v["name"] for v in nora.ok("GET", "/vms")) == ["va", "va2"]
    assert nora.get("/vms/vb").status_code == 404
    assert nora.get("/nodes").status_code == 403
    tasks = nora.ok("GET", "/tasks")
    assert tasks and {t["target"] for t in tasks} <= {vms["va"], made["vm"]}
    whoami = nora.ok("GET", "/auth/whoami")
    assert whoami["role"] is None and whoami["grants"] == [
        {"scope": "group", "name": "ga", "role": "operator"}
    ]
    # A token made with a lower role carries no more on the group either.
    reader = Api(api.url, nora.ok("POST", "/tokens", json={"role": "viewer"})["token"], api.tls)
    assert reader.ok("GET", "/vms/va")["name"] == "va"
    assert reader.patch("/vms/va", json={"description": "x"}).status_code == 403
    assert reader.get("/vms/va/console/serial").status_code == 403

    api.ok("DELETE", f"/grants/{grants['gina']['id']}")
    assert gina.patch("/vms/va", json={"description": "again"}).status_code == 403
    assert [g["user"] for g in api.ok("GET", "/grants")] == ["nora"]
    audit = api.ok("GET", "/events", params={"limit": 300})
    assert any(e["method"] == "DELETE" and e["path"].startswith("/api/v1/grants/") for e in audit)
    api.ok("DELETE", "/users/nora")
    assert api.ok("GET", "/grants") == []  # a user's grants go with the user
    for vm in ("va", "va2", "vb"):
        api.wait_task(api.ok("DELETE", f"/vms/{vm}")["task"])


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
