"""The Grafana dashboards Heron ships (heron/monitor/grafana): Grafana's dashboard model, a
`datasource` variable of type prometheus that every query uses, panels on the grid without
overlaps, and queries that read only metrics Heron exports (the catalog) by labels it sets.
Evaluated by a real Prometheus in tests/integration/test_prometheus.py."""

import fnmatch
import re
import tomllib
from itertools import combinations
from typing import Any

import pytest
import yaml
from dashboards import (
    BUILTIN,
    DASHBOARDS,
    GRAFANA,
    PROVISIONING,
    dashboards,
    exprs,
    label_names,
    metric_names,
    panels,
    query_variables,
    substitute,
    variables,
)
from support import ROOT

from heron.monitor.catalog import METRICS

SCHEMA_VERSION = 41  # Grafana 12's dashboard model
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# The labels of Heron's series (see heron.monitor.catalog): its own, and Prometheus's target.
LABELS = {
    "node", "mode", "device", "mountpoint", "fstype", "vm", "target_device", "id", "name",
    "type", "pool", "disk", "peer", "volume", "certificate", "kind", "state", "switch", "port",
    "job", "instance",
}  # fmt: skip
BOARDS = dashboards()


def test_there_is_a_dashboard_for_the_cluster_nodes_vms_and_storage() -> None:
    assert set(BOARDS) == {"heron-cluster", "heron-node", "heron-vm", "heron-storage"}
    assert len({b["title"] for b in BOARDS.values()}) == len(BOARDS)


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_a_dashboard_follows_grafanas_model(name: str) -> None:
    board = BOARDS[name]
    assert board["uid"] == name and board["id"] is None
    assert board["schemaVersion"] == SCHEMA_VERSION
    assert "heron" in board["tags"] and board["title"].startswith("Heron / ")
    assert board["time"]["to"] == "now" and board["panels"]
    templating = {v["name"]: v for v in board["templating"]["list"]}
    source = templating["datasource"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    before = {"datasource"}
    for variable, (selector, label) in query_variables(board).items():
        assert templating[variable]["datasource"] == DATASOURCE
        assert len(metric_names(selector)) == 1 and metric_names(selector) <= set(METRICS)
        assert label == variable and label in LABELS and label_names(selector) <= LABELS
        assert variables(selector) <= before, (variable, selector)
        before.add(variable)


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_panels_have_unique_ids_and_places_on_the_grid(name: str) -> None:
    found = list(panels(BOARDS[name]))
    ids = [p["id"] for p in found]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids)
    boxes = []
    for panel in found:
        pos = panel["gridPos"]
        assert set(pos) == {"h", "w", "x", "y"} and all(isinstance(v, int) for v in pos.values())
        assert pos["x"] >= 0 and pos["y"] >= 0 and pos["h"] > 0 and pos["w"] > 0
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        boxes.append((panel["title"], pos))
    for (a, p), (b, q) in combinations(boxes, 2):
        apart = (
            p["x"] + p["w"] <= q["x"]
            or q["x"] + q["w"] <= p["x"]
            or p["y"] + p["h"] <= q["y"]
            or q["y"] + q["h"] <= p["y"]
        )
        assert apart, f"{a!r} and {b!r} overlap"


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_every_panel_queries_heron_metrics_through_the_datasource_variable(name: str) -> None:
    board = BOARDS[name]
    defined = {v["name"] for v in board["templating"]["list"]} | BUILTIN
    for panel in panels(board):
        if panel["type"] == "row":
            assert "targets" not in panel
            continue
        assert panel["title"] and panel["description"], panel
        assert panel["datasource"] == DATASOURCE and panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert target["datasource"] == DATASOURCE and expr.strip(), panel["title"]
            assert metric_names(expr) and metric_names(expr) <= set(METRICS), (panel, expr)
            assert label_names(expr) <= LABELS, expr
            assert variables(expr) <= defined, expr
            legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
            assert legend <= LABELS, target
        links = panel["fieldConfig"]["defaults"].get("links", [])
        for link in links:
            uid = re.match(r"/d/([\w-]+)/", link["url"])
            assert uid and uid[1] in BOARDS, link


def test_the_expression_reader_finds_metric_and_label_names() -> None:
    expr = (
        'topk(10, 1 - sum by (node) (rate(node_cpu_seconds_total{mode="idle", node=~"$node"}'
        "[$__rate_interval])) / on (node) node_load1 > bool 1e3) or vector(0)"
    )
    assert metric_names(expr) == {"node_cpu_seconds_total", "node_load1"}
    assert label_names(expr) == {"mode", "node"}
    assert variables(expr) == {"node", "__rate_interval"}
    assert "$" not in substitute(expr, {"node": "node1", "__rate_interval": "1m"})


def _provisioning(name: str) -> Any:
    return yaml.safe_load((PROVISIONING / name).read_text())


def test_the_provisioning_examples_name_a_folder_of_files_and_a_prometheus() -> None:
    providers = _provisioning("dashboards.yaml")
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
    sources = _provisioning("datasource.yaml")
    assert sources["apiVersion"] == 1
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http")


def test_the_package_ships_every_dashboard_and_provisioning_file() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["heron"]
    package = GRAFANA.parent.parent
    shipped = [*DASHBOARDS.glob("*.json"), *PROVISIONING.glob("*.yaml")]
    assert len(shipped) == len(BOARDS) + 2
    for path in shipped:
        relative = path.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(relative, p) for p in patterns), relative


def _metrics_of(board: dict[str, Any]) -> set[str]:
    return {name for _, expr in exprs(board) for name in metric_names(expr)}


def test_the_cluster_dashboard_charts_the_leader_nodes_vms_tasks_and_switches() -> None:
    cluster = _metrics_of(BOARDS["heron-cluster"])
    assert {"heron_leader", "heron_cluster_nodes_up", "heron_cluster_vms"} <= cluster
    assert "heron_tasks_ended_total" in cluster
    switches = {n for n in METRICS if n.startswith("heron_switch_port_")}
    assert switches and switches <= cluster
    # A node's own switch ports on its dashboard.
    node = _metrics_of(BOARDS["heron-node"])
    assert {
        "heron_switch_port_receive_bytes_total",
        "heron_switch_port_transmit_bytes_total",
    } <= node


def test_a_vm_is_picked_and_named_by_its_name_through_heron_vm_info() -> None:
    picked = query_variables(BOARDS["heron-vm"])
    assert list(picked) == ["name", "vm"]
    assert picked["name"] == ("heron_vm_info", "name")
    assert picked["vm"] == ('heron_vm_info{name="$name"}', "vm")
    # Where other dashboards list VMs, they name them, and link to the VM's by name and id.
    for board in (BOARDS["heron-cluster"], BOARDS["heron-node"]):
        for panel in panels(board):
            targets = panel.get("targets", [])
            if not any("vm" in label_names(t["expr"]) for t in targets):
                continue
            for t in targets:
                assert "heron_vm_info" in metric_names(t["expr"]), (panel["title"], t["expr"])
                assert t["legendFormat"] == "{{name}}", panel["title"]
            [link] = panel["fieldConfig"]["defaults"]["links"]
            assert "var-name=${__field.labels.name}" in link["url"]
            assert "var-vm=${__field.labels.vm}" in link["url"]
