"""Acceptance of the cluster core on a real 3-node devcluster with real QEMU guests."""

import json
import os
import signal
from collections import Counter
from pathlib import Path

import pytest
from support import Api, cli, etcd_snapshot, qemu_processes, serial_lines, wait_for

from heron.configdb import keys
from heron.devcluster import DevCluster

BOOT_TIMEOUT = 180  # six TCG guests booting at once on two cores


@pytest.fixture(scope="module")
def env(cluster3: tuple[DevCluster, str]) -> dict[str, str]:
    cluster, token = cluster3
    return {
        "HERON_URL": cluster.nodes[1].url,
        "HERON_TOKEN": token,
        "HERON_CONFIG": str(Path(cluster.dir) / "cli.json"),
        "HERON_CA_FILE": str(cluster.ca_file),
    }


def console(cluster: DevCluster, vm: dict) -> Path:
    return Path(cluster.node(vm["node"]).state_dir) / "vms" / vm["id"] / "console.log"


def wait_ready(cluster: DevCluster, vm: dict, count: int = 1) -> None:
    log = console(cluster, vm)
    wait_for(
        lambda: len(serial_lines(log, f"HERON-GUEST-READY uuid={vm['id']}")) >= count,
        BOOT_TIMEOUT,
        f"serial line of {vm['name']}",
    )


@pytest.fixture(scope="module")
def six_vms(cluster3: tuple[DevCluster, str], env: dict[str, str], image: str) -> list[dict]:
    cluster, _ = cluster3
    for i in range(6):
        cli(
            env,
            "vm",
            "create",
            f"web{i}",
            "--memory",
            "128M",
            "--disk",
            f"local:from={image}",
            "--nic",
            "user",
            "--start",
        )
    vms = json.loads(cli(env, "vm", "list", "--json").stdout)
    for vm in vms:
        wait_ready(cluster, vm)
    return vms


def test_six_vms_spread_over_the_nodes_and_boot(cluster3, env, six_vms) -> None:
    cluster, _ = cluster3
    listed = {vm["name"]: vm for vm in json.loads(cli(env, "vm", "list", "--json").stdout)}
    assert sorted(listed) == [f"web{i}" for i in range(6)]
    assert all(vm["state"] == "running" and vm["status"]["pid"] for vm in listed.values())
    per_node = Counter(vm["node"] for vm in listed.values())
    assert len(per_node) == 3 and set(per_node.values()) == {2}, per_node
    for vm in listed.values():
        # The guest of each VM answered with its own SMBIOS UUID on its own node.
        assert qemu_processes(vm["id"]) == [vm["status"]["pid"]]
        assert Path(cluster.node(vm["node"]).state_dir, "vms", vm["id"]).is_dir()


def test_kill_9_of_an_agent_stops_no_vm(cluster3, api, six_vms) -> None:
    cluster, _ = cluster3
    victim = "node2"
    before = {
        vm["id"]: vm["status"]["pid"]
        for vm in map(api.vm, (v["id"] for v in six_vms))
        if vm["node"] == victim
    }
    assert before
    os.kill(cluster.herond_pid(cluster.node(victim)), signal.SIGKILL)
    wait_for(lambda: cluster.herond_pid(cluster.node(victim)) is None, 10, "herond to die")
    assert cluster.qemu_pids(victim) == before  # every QEMU still runs, same pids
    # Once its lease runs out the node is gone, and nobody vouches for its VMs.
    nodes = lambda: {n["name"] for n in api.ok("GET", "/nodes")}  # noqa: E731
    wait_for(lambda: victim not in nodes(), 30, "the lease of the dead agent to expire")
    assert {api.vm(vm_id)["state"] for vm_id in before} == {"unknown"}

    cluster.start_node(victim)
    cluster.wait_api(cluster.node(victim), 60)
    wait_for(lambda: victim in nodes(), 30, "the node to register again")
    for vm_id, pid in before.items():
        vm = api.vm(vm_id)
        assert vm["state"] == "running" and vm["status"]["pid"] == pid
        assert qemu_processes(vm_id) == [pid], "a VM was started twice"
        assert len(serial_lines(console(cluster, vm), "HERON-GUEST-READY")) == 1


def test_two_writers_one_wins_the_other_gets_409(cluster3, api, six_vms) -> None:
    cluster, token = cluster3
    other = Api(cluster.nodes[2].url, token, cluster.tls())
    revision = api.vm("web0")["revision"]
    replies = [
        client.patch("/vms/web0", json={"revision": revision, "description": text})
        for client, text in ((api, "first"), (other, "second"))
    ]
    assert sorted(r.status_code for r in replies) == [200, 409]
    winner = next(r for r in replies if r.status_code == 200).json()["spec"]["description"]
    assert api.vm("web0")["spec"]["description"] == winner


def _invalid_requests(
    api: Api, viewer: Api, operator: Api, anonymous: Api, finished_task: str
) -> list[tuple[str, Api, str, str, dict, int]]:
    vm = {"name": "valid-name", "memory_mib": 128}
    disk = {"pool": "local", "size": 1 << 20}
    web1 = api.vm("web1")
    volume = web1["spec"]["disks"][0]["volume"]
    cases = [
        ("no token", anonymous, "POST", "/vms", {"json": vm}, 401),
        ("bad token", api.as_token("hrn_forged"), "POST", "/vms", {"json": vm}, 401),
        ("no token on a read", anonymous, "GET", "/vms", {}, 401),
        ("viewer deletes", viewer, "DELETE", "/vms/web1", {}, 403),
        ("viewer creates", viewer, "POST", "/vms", {"json": vm}, 403),
        ("viewer starts", viewer, "POST", "/vms/web1/actions/stop", {}, 403),
        ("viewer reads a serial log", viewer, "GET", "/vms/web1/console/serial", {}, 403),
        ("viewer asks for a console", viewer, "POST", "/vms/web1/console/ticket", {}, 403),
        ("operator makes a pool", operator, "POST", "/pools", {"json": {"name": "p2"}}, 403),
        (
            "operator makes a user",
            operator,
            "POST",
            "/users",
            {"json": {"name": "u", "role": "admin", "password": "12345678"}},
            403,
        ),
        ("viewer lists users", viewer, "GET", "/users", {}, 403),
        ("vcpus not a number", api, "POST", "/vms", {"json": {**vm, "vcpus": "many"}}, 422),
        ("negative memory", api, "POST", "/vms", {"json": {**vm, "memory_mib": -1}}, 422),
        ("zero memory", api, "POST", "/vms", {"json": {**vm, "memory_mib": 0}}, 422),
        ("zero vcpus", api, "POST", "/vms", {"json": {**vm, "vcpus": 0}}, 422),
        ("too many vcpus", api, "POST", "/vms", {"json": {**vm, "vcpus": 100000}}, 422),
        ("empty name", api, "POST", "/vms", {"json": {**vm, "name": ""}}, 422),
        ("name with spaces", api, "POST", "/vms", {"json": {**vm, "name": "a b"}}, 422),
        ("upper-case name", api, "POST", "/vms", {"json": {**vm, "name": "Web"}}, 422),
        ("long name", api, "POST", "/vms", {"json": {**vm, "name": "a" * 64}}, 422),
        ("name starting with -", api, "POST", "/vms", {"json": {**vm, "name": "-a"}}, 422),
        ("no name", api, "POST", "/vms", {"json": {"memory_mib": 128}}, 422),
        ("bad firmware", api, "POST", "/vms", {"json": {**vm, "firmware": "coreboot"}}, 422),
        ("bad machine", api, "POST", "/vms", {"json": {**vm, "machine": "virt"}}, 422),
        (
            "unknown pool",
            api,
            "POST",
            "/vms",
            {"json": {**vm, "disks": [{"pool": "nope", "size": 1 << 20}]}},
            422,
        ),
        (
            "unknown image",
            api,
            "POST",
            "/vms",
            {"json": {**vm, "disks": [{"pool": "local", "source": "shared/nope"}]}},
            422,
        ),
        (
            "unknown volume",
            api,
            "POST",
            "/vms",
            {"json": {**vm, "disks": [{"volume": "local/nope"}]}},
            422,
        ),
        (
            "disk with neither size nor source",
            api,
            "POST",
            "/vms",
            {"json": {**vm, "disks": [{"pool": "local"}]}},
            422,
        ),
        (
            "disk with volume and pool",
            api,
            "POST",
            "/vms",
            {"json": {**vm, "disks": [{"volume": "x", "pool": "local"}]}},
            422,
        ),
        (
            "negative disk size",
            api,
            "POST",
            "/vms",
            {"json": {**vm, "disks": [{"pool": "local", "size": -5}]}},
            422,
        ),
        (
            "unknown disk bus",
            api,
            "POST",
            "/vms",
            {"json": {**vm, "disks": [{**disk, "bus": "nvme"}]}},
            422,
        ),
        (
            "unknown network",
            api,
            "POST",
            "/vms",
            {"json": {**vm, "nics": [{"network": "br0"}]}},
            422,
        ),
        (
            "bad MAC",
            api,
            "POST",
            "/vms",
            {"json": {**vm, "nics": [{"mac": "zz:zz:zz:zz:zz:zz"}]}},
            422,
        ),
        (
            "boot from a missing disk",
            api,
            "POST",
            "/vms",
            {"json": {**vm, "boot_order": ["disk3"]}},
            422,
        ),
        ("boot from a cdrom", api, "POST", "/vms", {"json": {**vm, "boot_order": ["cdrom"]}}, 422),
        ("unknown field", api, "POST", "/vms", {"json": {**vm, "cpus": 2}}, 422),
        ("duplicate name", api, "POST", "/vms", {"json": {**vm, "name": "web1"}}, 409),
        ("unknown node", api, "POST", "/vms", {"json": {**vm, "node": "node9"}}, 422),
        (
            "no node has the memory",
            api,
            "POST",
            "/vms",
            {"json": {**vm, "memory_mib": 4 * 1024 * 1024}},
            409,
        ),
        (
            "volume in use by another VM",
            api,
            "POST",
            "/vms",
            {"json": {**vm, "disks": [{"volume": volume}]}},
            409,
        ),
        (
            "body not JSON",
            api,
            "POST",
            "/vms",
            {"content": b"{", "headers": {"content-type": "application/json"}},
            422,
        ),
        ("body a list", api, "POST", "/vms", {"json": [vm]}, 422),
        ("unknown VM", api, "GET", "/vms/nope", {}, 404),
        ("start an unknown VM", api, "POST", "/vms/nope/actions/start", {}, 404),
        ("unknown action", api, "POST", "/vms/web1/actions/explode", {}, 422),
        ("resume a running VM", api, "POST", "/vms/web1/actions/resume", {}, 409),
        (
            "shutdown timeout negative",
            api,
            "POST",
            "/vms/web1/actions/shutdown",
            {"json": {"timeout": -1}},
            422,
        ),
        (
            "stale revision",
            api,
            "PATCH",
            "/vms/web1",
            {"json": {"revision": web1["revision"] - 1, "description": "x"}},
            409,
        ),
        ("negative memory on update", api, "PATCH", "/vms/web1", {"json": {"memory_mib": -5}}, 422),
        ("rename onto another VM", api, "PATCH", "/vms/web1", {"json": {"name": "web2"}}, 409),
        ("delete an unknown VM", api, "DELETE", "/vms/nope", {}, 404),
        ("relative pool path", api, "POST", "/pools", {"json": {"name": "p", "path": "x"}}, 422),
        ("duplicate pool", api, "POST", "/pools", {"json": {"name": "local"}}, 409),
        (
            "shared pool without a path",
            api,
            "POST",
            "/pools",
            {"json": {"name": "p", "shared": True}},
            422,
        ),
        (
            "negative volume size",
            api,
            "POST",
            "/pools/local/volumes",
            {"json": {"name": "v", "size": -1}},
            422,
        ),
        (
            "volume in an unknown pool",
            api,
            "POST",
            "/pools/nope/volumes",
            {"json": {"name": "v", "size": 1 << 20}},
            404,
        ),
        (
            "duplicate volume",
            api,
            "POST",
            "/pools/local/volumes",
            {"json": {"name": "web1-disk0", "size": 1 << 20}},
            409,
        ),
        (
            "shrink a volume",
            api,
            "PATCH",
            f"/pools/local/volumes/{volume}",
            {"json": {"size": 1 << 20}},
            422,
        ),
        ("delete a volume in use", api, "DELETE", f"/pools/local/volumes/{volume}", {}, 409),
        ("delete a pool with volumes", api, "DELETE", "/pools/local", {}, 409),
        ("unknown task", api, "GET", "/tasks/nope", {}, 404),
        ("cancel a finished task", api, "POST", f"/tasks/{finished_task}/cancel", {}, 409),
        (
            "wrong password",
            anonymous,
            "POST",
            "/auth/login",
            {"json": {"username": "admin", "password": "wrong"}},
            401,
        ),
        (
            "weak password",
            api,
            "POST",
            "/users",
            {"json": {"name": "weak", "role": "viewer", "password": "123"}},
            422,
        ),
    ]
    return cases


def without_login_failures(snapshot: dict[str, tuple[bytes, int]]) -> dict[str, tuple[bytes, int]]:
    """What requests may change: not the login failures they count, nor the alerts the
    leader keeps on its own rounds (a stopped node's node-down alert is rewritten by them)."""
    return {
        k: v for k, v in snapshot.items()
        if not k.startswith((keys.LOGIN_FAILURES, keys.ALERTS))
    }  # fmt: skip


def test_invalid_requests_get_4xx_and_change_nothing(cluster3, api, six_vms) -> None:
    cluster, _ = cluster3
    for name, role in (("vera", "viewer"), ("otto", "operator")):
        api.ok("POST", "/users", json={"name": name, "role": role, "password": "secret-pw-1"})
    tokens = {
        name: api.ok("POST", "/auth/login", json={"username": name, "password": "secret-pw-1"})[
            "token"
        ]
        for name in ("vera", "otto")
    }
    viewer, operator = api.as_token(tokens["vera"]), api.as_token(tokens["otto"])
    finished = api.ok("GET", "/tasks")[-1]["id"]
    cases = _invalid_requests(api, viewer, operator, api.as_token(None), finished)
    assert len(cases) >= 50
    # A failed login is counted (login protection): the only write a refused request makes.
    before = without_login_failures(etcd_snapshot(cluster))
    failures = []
    for name, client, method, path, kwargs, expected in cases:
        reply = client.request(method, path, **kwargs)
        body = reply.json()
        if reply.status_code != expected or not body.get("message"):
            failures.append(f"{name}: {method} {path} -> {reply.status_code} {reply.text}")
        elif expected == 422:
            assert body["fields"] and all(f["field"] and f["reason"] for f in body["fields"])
    assert not failures, "\n".join(failures)
    assert without_login_failures(etcd_snapshot(cluster)) == before
    # What a viewer is refused, an operator has: the console permission.
    log = operator.ok("GET", "/vms/web1/console/serial")
    assert "HERON-GUEST-READY" in log["text"]
    refused = [
        e for e in api.ok("GET", "/events", params={"limit": 1000}) if e["result"] == "refused"
    ]
    assert len(refused) >= len([c for c in cases if c[2] != "GET" or c[5] in (401, 403)])


def test_cli_errors_are_one_line_and_nonzero(env) -> None:
    result = cli(env, "vm", "create", "Bad Name", check=False)
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1 and "name" in result.stderr
    result = cli({**env, "HERON_TOKEN": "hrn_forged"}, "vm", "list", check=False)
    assert result.returncode != 0 and "401" in result.stderr


def test_any_node_reports_every_volume_with_its_real_allocation(env, six_vms) -> None:
    volumes = json.loads(cli(env, "volume", "list", "local", "--json").stdout)
    disks = {v["name"]: v for v in volumes if v["name"].startswith("web")}
    assert len(disks) == 6 and len({v["node"] for v in disks.values()}) == 3
    for volume in disks.values():
        # Read by the node holding the file; a booted guest's qcow2 holds real data.
        assert volume["allocation"] and 0 < volume["allocation"] <= volume["size"] * 1.1
        assert volume["attached_to"] == volume["name"].removesuffix("-disk0")


def test_groups_and_mass_deployment(api, six_vms) -> None:
    before = len(api.ok("GET", "/vms"))
    api.ok("POST", "/groups", json={"name": "db", "placement": "spread", "strict": True})
    api.ok("POST", "/groups", json={"name": "app", "placement": "together", "strict": True})
    template = {"name": "db", "count": 3, "memory_mib": 64, "group": "db"}
    plan = api.ok("POST", "/vms/batch", json={**template, "dry_run": True})
    assert plan["dry_run"] and len({item["node"] for item in plan["vms"]}) == 3
    assert len(api.ok("GET", "/vms")) == before  # a dry run writes nothing

    made = api.ok("POST", "/vms/batch", json=template)["vms"]
    assert [m["name"] for m in made] == ["db-001", "db-002", "db-003"]
    assert [m["node"] for m in made] == [p["node"] for p in plan["vms"]]
    for item in made:
        api.wait_task(item["task"])
        assert api.vm(item["vm"])["node"] == item["node"]
    refused = api.post("/vms", json={"name": "db-004", "memory_mib": 64, "group": "db"})
    assert refused.status_code == 409 and "group db" in refused.json()["message"]

    app = api.ok(
        "POST", "/vms/batch", json={"name": "app", "count": 3, "memory_mib": 64, "group": "app"}
    )["vms"]
    assert len({item["node"] for item in app}) == 1
    assert api.delete("/groups/app").status_code == 409
    unknown = api.post("/vms", json={"name": "x", "memory_mib": 64, "group": "nope"})
    assert unknown.status_code == 422
