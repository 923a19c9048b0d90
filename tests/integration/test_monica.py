"""Monica on a real 3-node devcluster: every node measures and keeps its history, a query
through one node gathers all of them, a node's 1 s live view asked through another,
Prometheus's exposition, and alerts — fired by the nodes and by the leader, acknowledged,
silenced, inhibited by a node down, resolved."""

import itertools
import json
import os
import signal
from pathlib import Path

import httpx
import pytest
from support import Api, cli, wait_for

from bench.alert_latency import Receiver
from heron.devcluster import DevCluster

pytestmark = pytest.mark.integration

ROUND = 10  # seconds between a node's measurements
ROUNDS = 6 * ROUND  # a wait of a few rounds: the condition, the round, the leader's round


def series(api: Api, metric: str, *labels: str) -> dict[str, list[list[float | None]]]:
    answer = api.ok("GET", "/metrics/history", params={"metric": metric, "label": list(labels)})
    return {s["key"]: s["points"] for s in answer["series"]}


def measured(points: list[list[float | None]]) -> list[float]:
    return [p[2] for p in points if p[2] is not None]


def test_every_node_keeps_its_history_and_one_query_gathers_them(cluster3, api: Api) -> None:
    found = wait_for(
        lambda: (
            len(got := series(api, "heron_configdb_up")) == 3
            and all(measured(p) for p in got.values())
            and got
        ),
        ROUNDS,
        "a sample of every node",
    )
    assert sorted(found) == [f'heron_configdb_up{{node="node{i}"}}' for i in (1, 2, 3)]
    assert all(set(measured(p)) == {1.0} for p in found.values())
    # The certificate's time left goes down as the rounds go by.
    left = wait_for(
        lambda: (
            (got := series(api, "heron_certificate_expiry_seconds", "certificate=node"))
            and all(len(measured(p)) >= 2 for p in got.values())
            and got
        ),
        ROUNDS,
        "two rounds of certificate samples",
    )
    for points in left.values():
        first, last = measured(points)[0], measured(points)[-1]
        assert 0 < first - last < 3 * ROUNDS
    # A counter's history is its rate: CPU seconds a second, between none and every core.
    busy = wait_for(
        lambda: (
            (got := series(api, "node_cpu_seconds_total", "mode=idle"))
            and all(measured(p) for p in got.values())
            and got
        ),
        ROUNDS,
        "a rate of the CPUs' idle time",
    )
    assert len(busy) == 3
    for points in busy.values():
        assert all(0 <= rate <= (os.cpu_count() or 1) * 1.05 for rate in measured(points))


def test_bad_queries_are_refused_with_the_field(api: Api) -> None:
    reply = api.get("/metrics/history", params={"metric": "no_such_metric"})
    assert reply.status_code == 422
    assert reply.json()["fields"][0]["field"] == "query.metric"
    reply = api.get(
        "/metrics/history", params={"metric": "heron_configdb_up", "start": 10, "end": 5}
    )
    assert reply.status_code == 422 and reply.json()["fields"][0]["field"] == "query.end"
    reply = api.get("/metrics/history", params={"metric": "heron_configdb_up", "label": "x"})
    assert reply.status_code == 422 and reply.json()["fields"][0]["field"] == "query.label"


def test_the_forecast_lists_pools_memory_and_cpu_with_what_history_it_lacks(
    cluster3, api: Api
) -> None:
    pools = {p["name"] for p in api.ok("GET", "/pools")}

    def measured_capacity() -> dict | None:
        answer = api.ok("GET", "/metrics/forecast")
        found = {r["kind"]: r for r in answer["resources"]}
        return answer if found["cpu"]["capacity"] and found["memory"]["capacity"] else None

    answer = wait_for(measured_capacity, ROUNDS, "the nodes' memory and cores measured")
    assert answer["window_days"] == 30
    kinds = [(r["kind"], r["name"]) for r in answer["resources"]]
    assert {name for kind, name in kinds if kind == "pool"} >= pools
    assert kinds[-2:] == [("memory", "memory"), ("cpu", "cpu")]
    cpu = answer["resources"][-1]
    # Three nodes on this machine: three times its cores (CPU seconds a second, all modes).
    assert cpu["capacity"] == pytest.approx(3 * (os.cpu_count() or 1), rel=0.1)
    # A cluster minutes old has not a day of history: it says so, and guesses nothing.
    for resource in answer["resources"]:
        assert resource["status"] == "not_enough_history", resource
        assert resource["days"] is None and resource["history_hours"] < 24
    reply = api.get("/metrics/forecast", params={"days": 0})
    assert reply.status_code == 422 and reply.json()["fields"][0]["field"] == "query.days"


def successive_seconds(times: list[float]) -> int:
    """The longest run of points one second apart."""
    longest = run = 1 if times else 0
    for a, b in itertools.pairwise(times):
        run = run + 1 if b - a == 1.0 else 1
        longest = max(longest, run)
    return longest


def test_a_nodes_live_view_each_second_through_another_node(cluster3, api: Api) -> None:
    # Asked of node1, answered by node2: the first call starts node2 watching itself.
    first = api.ok("GET", "/metrics/live", params={"object": "node:node2"})
    assert (first["object"], first["node"], first["step"]) == ("node:node2", "node2", 1)

    def seconds() -> dict | None:
        got = api.ok("GET", "/metrics/live", params={"object": "node:node2"})
        times = sorted({p[0] for s in got["series"] for p in s["points"]})
        return got if successive_seconds(times) >= 5 else None

    got = wait_for(seconds, 60, "five successive seconds of node2")
    keys = {s["key"] for s in got["series"]}
    assert {'node_cpu_seconds_total{mode="user"}', "node_memory_MemTotal_bytes"} <= keys, keys
    assert not any(key.startswith("node_filesystem") for key in keys)  # not drawn live
    for s in got["series"]:
        times = [p[0] for p in s["points"]]
        assert times == sorted(set(times)), s
        if s["key"].startswith("node_cpu_seconds_total"):  # a rate: CPU seconds a second
            assert all(0 <= p[1] <= (os.cpu_count() or 1) * 1.05 for p in s["points"]), s
    last = max(p[0] for s in got["series"] for p in s["points"])
    newer = api.ok("GET", "/metrics/live", params={"object": "node:node2", "since": last})
    assert all(p[0] > last for s in newer["series"] for p in s["points"])

    reply = api.get("/metrics/live", params={"object": "pool:shared"})
    assert reply.status_code == 422 and reply.json()["fields"][0]["field"] == "query.object"
    assert api.get("/metrics/live", params={"object": "node:nowhere"}).status_code == 409
    assert api.get("/metrics/live", params={"object": "vm:nosuch"}).status_code == 404

    # The CLI: a line a second (here as JSON), the times one after another.
    cluster, _ = cluster3
    env = {
        "HERON_URL": api.url,
        "HERON_TOKEN": api.token or "",
        "HERON_CONFIG": str(Path(cluster.dir) / "cli.json"),
        "HERON_CA_FILE": str(cluster.ca_file),
    }
    lines = cli(env, "metrics", "live", "node:node3", "--count", "3", "--json").stdout
    times = [json.loads(line)["time"] for line in lines.splitlines()]
    assert len(times) == 3 and times == sorted(set(times)), lines


def test_prometheus_reads_a_node_with_a_token_only(cluster3, api: Api) -> None:
    cluster, _ = cluster3
    url = f"{cluster.nodes[1].url}/api/v1/metrics"
    assert httpx.get(url, verify=cluster.tls()).status_code == 401
    text = wait_for(
        lambda: (
            'heron_configdb_up{node="node2"} 1.0'
            in (t := api.as_token(api.token).http.get(url).text)
            and t
        ),
        ROUNDS,
        "the node's latest round",
    )
    assert "# TYPE heron_certificate_expiry_seconds gauge" in text


def rule(api: Api, name: str, **fields: object) -> None:
    body = {"name": name, "metric": "heron_configdb_up", "op": ">=", "value": 1,
            "for_seconds": 0, "severity": "warning", "summary": "{node} reads etcd"}  # fmt: skip
    api.ok("PUT", f"/alerts/rules/{name}", json={**body, **fields})


def alerts(api: Api, name: str, state: str | None = None) -> dict[str, dict]:
    found = api.ok("GET", "/alerts", params={"state": state} if state else {})
    return {a["labels"]["node"]: a for a in found if a["rule"] == name}


def test_a_rule_fires_on_every_node_and_is_acknowledged_silenced_and_resolved(
    api: Api,
) -> None:
    rule(api, "reads-etcd")
    firing = wait_for(
        lambda: len(got := alerts(api, "reads-etcd", "firing")) == 3 and got,
        ROUNDS,
        "the rule firing on every node",
    )
    assert firing["node2"]["summary"] == "node2 reads etcd"
    acked = api.ok("POST", f"/alerts/{firing['node1']['id']}/acknowledge")
    assert acked["acknowledged_by"] == "admin"
    silence = api.ok(
        "POST",
        "/alerts/silences",
        json={"rule": "reads-etcd", "matchers": {"node": "node2"}, "duration": 600},
    )
    wait_for(
        lambda: alerts(api, "reads-etcd")["node2"]["silenced_by"] == silence["id"],
        ROUNDS,
        "the leader to mark the alert silenced",
    )
    assert alerts(api, "reads-etcd")["node3"]["silenced_by"] is None
    rule(api, "reads-etcd", enabled=False)
    wait_for(
        lambda: len(got := alerts(api, "reads-etcd", "resolved")) == 3 and got,
        ROUNDS,
        "every alert of the rule turned off to resolve",
    )
    api.ok("DELETE", "/alerts/rules/reads-etcd")
    api.ok("DELETE", f"/alerts/silences/{silence['id']}")


def test_bad_rules_and_silences_are_refused_and_built_ins_stay(api: Api) -> None:
    reply = api.put(
        "/alerts/rules/odd", json={"name": "odd", "metric": "no_such_metric", "value": 1}
    )
    assert reply.status_code == 422 and reply.json()["fields"][0]["field"] == "body.metric"
    reply = api.post("/alerts/silences", json={"matchers": {}, "duration": 60})
    assert reply.status_code == 422 and reply.json()["fields"][0]["field"] == "body.matchers"
    assert api.delete("/alerts/rules/node-down").status_code == 409
    names = {r["name"] for r in api.ok("GET", "/alerts/rules")}
    assert {"node-down", "vm-crashed", "pool-nearly-full", "certificate-expiring"} <= names
    assert "odd" not in names


def test_a_node_down_fires_and_inhibits_the_node_s_other_alerts(
    cluster3: tuple[DevCluster, str], api: Api
) -> None:
    cluster, _ = cluster3
    rule(api, "reads-etcd-too")
    wait_for(lambda: len(alerts(api, "reads-etcd-too", "firing")) == 3, ROUNDS, "the rule firing")
    victim = cluster.node("node3")
    pid = cluster.herond_pid(victim)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    try:
        down = wait_for(
            lambda: alerts(api, "node-down", "firing").get("node3"), ROUNDS, "node3 down"
        )
        assert down["severity"] == "critical"
        wait_for(
            lambda: alerts(api, "reads-etcd-too")["node3"]["inhibited_by"] == down["id"],
            ROUNDS,
            "node3's other alert to be inhibited",
        )
        assert alerts(api, "reads-etcd-too")["node2"]["inhibited_by"] is None
    finally:
        cluster.start_node("node3")
    cluster.wait_api(victim, 60)
    wait_for(
        lambda: "node3" in alerts(api, "node-down", "resolved"), ROUNDS, "node3 back: resolved"
    )
    rule(api, "reads-etcd-too", enabled=False)


def test_a_killed_vm_s_alert_fires_and_resolves_when_ha_restarts_it(
    cluster3: tuple[DevCluster, str], api: Api, image: str
) -> None:
    reply = api.ok(
        "POST",
        "/vms",
        json={"name": "watched", "memory_mib": 64, "node": "node1", "start": True,
              "ha": {"enabled": True}, "disks": [{"pool": "shared", "source": image}]},
    )  # fmt: skip
    api.wait_task(reply["task"])
    vm_id = reply["vm"]
    pid = api.vm(vm_id)["status"]["pid"]
    os.kill(pid, signal.SIGKILL)
    crashed = wait_for(
        lambda: next((a for a in api.ok("GET", "/alerts") if a["labels"].get("vm") == vm_id), None),
        ROUNDS,
        "the VM's crash alert",
    )
    assert (crashed["rule"], crashed["labels"]["vm_name"]) == ("vm-crashed", "watched")
    wait_for(
        lambda: (
            next(a for a in api.ok("GET", "/alerts") if a["id"] == crashed["id"])["state"]
            == "resolved"
        ),
        ROUNDS,
        "the alert to resolve once HA restarted the VM",
    )
    assert api.vm(vm_id)["state"] == "running"
    # Its QEMU's CPU time is measured, as one series with the VM's id.
    wait_for(
        lambda: (
            f'libvirt_domain_info_cpu_time_seconds_total{{vm="{vm_id}"}}'
            in series(api, "libvirt_domain_info_cpu_time_seconds_total", f"vm={vm_id}")
        ),
        ROUNDS,
        "the VM's CPU time",
    )
    # Its node's /metrics says which VM the id is (dashboards pick VMs by name through it).
    node = api.vm(vm_id)["node"]
    url = f"{cluster3[0].node(node).url}/api/v1/metrics"
    info = f'heron_vm_info{{name="watched",node="{node}",vm="{vm_id}"}} 1.0'
    wait_for(lambda: info in api.http.get(url).text, ROUNDS, "the VM's heron_vm_info")


def test_notices_reach_a_webhook_but_not_for_a_silenced_alert(api: Api) -> None:
    receiver = Receiver()
    try:
        api.ok(
            "PUT",
            "/alerts/channels/hook",
            json={"name": "hook", "settings": {"kind": "webhook", "url": receiver.url},
                  "min_severity": "info"},
        )  # fmt: skip
        api.ok(
            "POST",
            "/alerts/silences",
            json={"rule": "told", "matchers": {"node": "node1"}, "duration": 600},
        )
        rule(api, "told")
        sent = wait_for(
            lambda: len(got := receiver.notices("told")) >= 2 and got, ROUNDS, "two notices"
        )
        assert {n["labels"]["node"] for n in sent} == {"node2", "node3"}
        assert all(n["state"] == "firing" for n in sent)
        # The silenced one is marked, and its notice was never sent.
        wait_for(
            lambda: alerts(api, "told")["node1"]["silenced_by"] is not None,
            ROUNDS,
            "node1's alert marked silenced",
        )
        assert "node1" not in {n["labels"]["node"] for n in receiver.notices("told")}
        rule(api, "told", enabled=False)
        wait_for(
            lambda: (
                {n["labels"]["node"] for n in receiver.notices("told") if n["state"] == "resolved"}
                == {"node2", "node3"}
            ),
            ROUNDS,
            "the resolved notices",
        )
    finally:
        receiver.close()
        api.delete("/alerts/channels/hook")


def test_a_node_that_left_has_its_alerts_resolved_as_object_removed(api: Api) -> None:
    """The module's last test: a node leaves the cluster for good. Its agent still runs here,
    its condition still holds; its alert resolves all the same, saying why."""
    rule(api, "reads-etcd-left")
    wait_for(lambda: len(alerts(api, "reads-etcd-left", "firing")) == 3, ROUNDS, "the rule firing")
    taken = {v["node"] for v in api.ok("GET", "/vms")}
    empty = next(n for n in ("node3", "node2") if n not in taken)
    api.ok("POST", f"/nodes/{empty}/leave")
    resolved = wait_for(
        lambda: (a := alerts(api, "reads-etcd-left")[empty])["state"] == "resolved" and a,
        ROUNDS,
        f"{empty}'s alert resolved once it left",
    )
    assert resolved["resolved_reason"] == "object removed"
    still = alerts(api, "reads-etcd-left")
    assert [still[n]["state"] for n in sorted(still) if n != empty] == ["firing", "firing"]
    rule(api, "reads-etcd-left", enabled=False)
