"""Heron's metrics read by Prometheus's own tools, on a real 3-node devcluster: promtool lints
a node's exposition, a real Prometheus scrapes every node over HTTPS (the cluster CA, a viewer
token as bearer credentials, as docs/operations.md tells an administrator), and every query
of the shipped Grafana dashboards is evaluated by it: none fails, and those on what the
cluster measures (no VM runs here: nodes, pools, services) return data."""

import re
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from dashboards import dashboards, exprs, metric_names, query_variables, substitute
from support import Api, wait_for

from heron.devcluster import DevCluster
from heron.monitor.catalog import METRICS
from heron.util.ports import free_port

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
ROUNDS = 60  # a few of the nodes' 10 s rounds
SCRAPE = 3  # seconds between Prometheus's scrapes here (10 s in production: a node's round)
# promtool's lint wants snake_case, and node_exporter names /proc/meminfo's fields as the
# kernel spells them (node_memory_MemTotal_bytes): Heron keeps its names so that dashboards
# and rules written for node_exporter read Heron's series, and node_exporter's own exposition
# draws the same complaint (prometheus/prometheus#10644). Nothing else may be reported.
CAMEL_CASE = "metric names should be written in 'snake_case' not 'camelCase'"
# Every node of a devcluster has these, whatever the machine (no VM runs, no ARDFS pool).
MEASURED = {
    "node_cpu_seconds_total", "node_load1", "node_memory_MemTotal_bytes",
    "node_memory_MemAvailable_bytes", "node_filesystem_size_bytes", "heron_configdb_up",
    "heron_certificate_expiry_seconds", "heron_pool_size_bytes", "heron_pool_used_ratio",
}  # fmt: skip
# Grafana's own variables, as it would fill them for a short range.
BUILTINS = {"__rate_interval": "1m", "__interval": "10s", "__range": "5m"}
NO_VM = "00000000-0000-4000-8000-000000000000"


@pytest.fixture(scope="module", autouse=True)
def shared_pool(cluster3: tuple[DevCluster, str], api: Api) -> str:
    """A pool every node measures alike (a directory all of them see, a stand-in for an NFS
    mount)."""
    cluster, _ = cluster3
    shared = cluster.root / "shared"
    shared.mkdir()
    api.ok("POST", "/pools", json={"name": "shared", "path": str(shared), "shared": True})
    return "shared"


@pytest.fixture(scope="module")
def viewer(api: Api) -> str:
    """A token of the viewer role, the least that reads /metrics."""
    reply = api.ok("POST", "/tokens", json={"description": "prometheus", "role": "viewer"})
    return str(reply["token"])


def latest_round(cluster: DevCluster, index: int, token: str) -> str:
    node = cluster.nodes[index]
    client = Api(node.url, token, cluster.tls())
    return wait_for(
        lambda: (
            (reply := client.get("/metrics")).status_code == 200
            and f'heron_configdb_up{{node="{node.name}"}} 1.0' in reply.text
            and "heron_pool_size_bytes{" in reply.text
            and reply.text
        ),
        ROUNDS,
        f"a round of {node.name}'s samples",
    )


def test_promtool_lints_a_nodes_exposition_as_node_exporters(cluster3, viewer: str) -> None:
    cluster, _ = cluster3
    text = latest_round(cluster, 1, viewer)
    assert "node_cpu_seconds_total{" in text and "heron_pool_size_bytes{" in text
    checked = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    problems = set((checked.stdout + checked.stderr).splitlines())
    families = set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))
    camel = {n for n in families if re.search(r"[a-z][A-Z]", n)}
    assert camel and all(n.startswith("node_memory_") for n in camel)
    assert problems == {f"{n} {CAMEL_CASE}" for n in camel}
    assert checked.returncode == 3  # promtool's code for lint problems, 1 for a bad exposition


@pytest.fixture(scope="module")
def prometheus(
    cluster3: tuple[DevCluster, str], viewer: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A real Prometheus scraping every node; its URL. Stopped at the end, however it ends."""
    cluster, _ = cluster3
    directory = tmp_path_factory.mktemp("prometheus")
    token = directory / "heron.token"
    token.touch(mode=0o600)
    token.write_text(viewer)
    config = {
        "global": {"scrape_interval": f"{SCRAPE}s", "scrape_timeout": f"{SCRAPE}s"},
        "scrape_configs": [
            {
                "job_name": "heron",
                "scheme": "https",
                "metrics_path": "/api/v1/metrics",
                "authorization": {"credentials_file": str(token)},
                "tls_config": {"ca_file": str(cluster.ca_file)},
                "static_configs": [{"targets": [f"127.0.0.1:{n.api_port}" for n in cluster.nodes]}],
            }
        ],
    }
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    checked = subprocess.run(
        [PROMTOOL, "check", "config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    url = f"http://127.0.0.1:{free_port()}"
    log = directory / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={path}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address={url.removeprefix('http://')}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=directory,
        )
    try:
        wait_for(lambda: _ready(url), 60, "Prometheus to be ready")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        print(log.read_text(errors="replace")[-4000:])


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def query(url: str, expr: str) -> dict[str, Any]:
    """Prometheus's answer to an instant query: {"status": ..., "data"|"error": ...}."""
    answer: dict[str, Any] = httpx.get(
        f"{url}/api/v1/query", params={"query": expr}, timeout=30
    ).json()
    return answer


def results(url: str, expr: str) -> list[dict[str, Any]]:
    answer = query(url, expr)
    assert answer["status"] == "success", (expr, answer)
    found: list[dict[str, Any]] = answer["data"]["result"]
    return found


def label_values(url: str, label: str, metric: str) -> list[str]:
    """What Grafana's label_values(metric, label) lists."""
    answer = httpx.get(
        f"{url}/api/v1/label/{label}/values", params={"match[]": metric}, timeout=30
    ).json()
    assert answer["status"] == "success", answer
    return sorted(answer["data"])


def test_prometheus_scrapes_every_node_with_the_ca_and_a_token(
    cluster3: tuple[DevCluster, str], prometheus: str, api: Api
) -> None:
    cluster, _ = cluster3
    created = api.ok("POST", "/vms", json={"name": "counted", "memory_mib": 16})
    api.wait_task(created["task"])  # a task ended, for heron_tasks_ended_total
    node_of = {f"127.0.0.1:{n.api_port}": n.name for n in cluster.nodes}

    def every_target_up() -> bool:
        up = results(prometheus, 'up{job="heron"}')
        return {r["metric"]["instance"] for r in up if r["value"][1] == "1"} == set(node_of)

    try:
        wait_for(every_target_up, ROUNDS, "every node's target up")
    except AssertionError:
        targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=30).json()
        errors = [(t["scrapeUrl"], t["lastError"]) for t in targets["data"]["activeTargets"]]
        raise AssertionError(f"targets not up: {errors}") from None
    # Each node's series, labelled with the node that measured them: the one scraped.
    for metric in ("node_cpu_seconds_total", "node_memory_MemAvailable_bytes", "node_load1"):
        found = wait_for(
            lambda m=metric: len(got := results(prometheus, f'{m}{{job="heron"}}')) >= 3 and got,
            ROUNDS,
            f"{metric} of every node",
        )
        assert {(r["metric"]["instance"], r["metric"]["node"]) for r in found} == set(
            node_of.items()
        )
    modes = {r["metric"]["mode"] for r in results(prometheus, "node_cpu_seconds_total")}
    assert {"user", "system", "idle"} <= modes
    # The cluster as the leader alone counts it (a sum over the nodes counts each once), and
    # the tasks the nodes ended: the VM's create.
    leader = wait_for(
        lambda: (got := results(prometheus, "heron_leader == 1")) and got,
        ROUNDS,
        "the leader's heron_leader",
    )
    assert len(leader) == 1
    [up] = wait_for(lambda: results(prometheus, "sum(heron_cluster_nodes_up)"), ROUNDS, "nodes up")
    assert up["value"][1] == "3"
    wait_for(
        lambda: results(prometheus, 'heron_tasks_ended_total{kind="vm.create",state="succeeded"}'),
        ROUNDS,
        "the VM's create counted",
    )


def test_every_dashboard_query_is_evaluated_and_what_is_measured_has_data(
    cluster3: tuple[DevCluster, str], prometheus: str
) -> None:
    cluster, _ = cluster3
    # Rates need two scrapes of every node.
    wait_for(
        lambda: len(results(prometheus, 'rate(node_cpu_seconds_total{mode="idle"}[1m])')) == 3,
        ROUNDS,
        "a rate of every node's CPU",
    )
    names = set(label_values(prometheus, "__name__", '{job="heron"}'))
    assert names >= MEASURED
    exported = names & set(METRICS)
    evaluated = with_data = 0
    for name, board in dashboards().items():
        values = dict(BUILTINS)
        for variable, (selector, label) in query_variables(board).items():
            listed = label_values(prometheus, label, substitute(selector, values))
            if variable == "node":
                assert listed == sorted(n.name for n in cluster.nodes)
            if variable == "pool":
                assert "shared" in listed
            values[variable] = listed[0] if listed else NO_VM
        for title, expr in exprs(board):
            sent = substitute(expr, values)
            answer = query(prometheus, sent)
            assert answer["status"] == "success", (name, title, sent, answer)
            evaluated += 1
            if metric_names(expr) <= exported and NO_VM not in sent:
                # The series of a metric that appeared in the latest scrape take one more for
                # a rate; an empty answer beyond that is a query that reads nothing.
                wait_for(
                    lambda q=sent: results(prometheus, q),
                    ROUNDS,
                    f"data for {name} / {title}: {sent}",
                )
                with_data += 1
    print(f"{evaluated} dashboard queries evaluated, {with_data} of them with data")
    assert with_data >= 20 and evaluated > with_data, (evaluated, with_data)
