"""Everything the API can change, an administrator can change in the browser.

The test reads the API's OpenAPI schema for its mutating operations, walks the web UI as an
administrator (every view of the menu, every tab of a VM's page and of the Alerts page, every
pool of the storage view) against a cluster that has one of everything, and collects the
operations the controls on the way offer: each control that sends a mutating request names it
in `data-op`. An operation of the schema that no control offers fails the test, unless it is
listed below with the reason it cannot be on the walk; those must still be offered somewhere in
the UI's source, and a browser test must use them.
"""

import re
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
from browsing import log_in, settle
from playwright.sync_api import BrowserContext, Page
from support import Api, wait_for

from heron.devcluster import DevCluster

pytestmark = pytest.mark.integration

WEB_SOURCE = Path(__file__).parents[2] / "web" / "src"
MUTATING = ("post", "put", "patch", "delete")

# Operations the walk cannot meet, and why. Each is still checked against the UI's source.
NOT_ON_THE_WALK = {
    "POST /tasks/{task_id}/cancel": (
        "offered only while a task runs; test_ui_vm.py cancels a migration with it"
    ),
    "POST /imports": (
        "offered once VMs of a source's scan are picked (the import wizard's mapping step); "
        "test_ui_imports.py checks and imports with it"
    ),
}


# Operations that are not a person's to make, so no control offers them.
NOT_FOR_PEOPLE = {
    "POST /auth/join": "a joining node's own request (herond --join), with its one-time token",
}


def schema_operations(url: str, tls: ssl.SSLContext) -> set[str]:
    spec = httpx.get(f"{url}/api/v1/openapi.json", verify=tls).json()
    return {
        f"{method.upper()} {path.removeprefix('/api/v1')}"
        for path, item in spec["paths"].items()
        for method in item
        if method in MUTATING
    }


def offered(page: Page) -> set[str]:
    settle(page)
    return set(page.eval_on_selector_all("[data-op]", "els => els.map(e => e.dataset.op)"))


@pytest.fixture(scope="module")
def one_of_everything(cluster3: tuple[DevCluster, str], api: Api, image: str) -> dict[str, Any]:
    """A cluster with something of every kind on it, so that every control has a row."""
    cluster, _ = cluster3
    api.ok("POST", "/groups", json={"name": "walk"})
    api.ok("POST", "/switches", json={"name": "walk-sw"})
    api.ok("POST", "/networks", json={"name": "walk-net", "switch": "walk-sw"})
    rule = {"protocol": "tcp", "ports": "22"}  # a row for the rule controls
    api.ok("POST", "/security-groups", json={"name": "walk-sg", "rules": [rule]})
    running = api.ok(
        "POST",
        "/vms",
        json={
            "name": "walker",
            "node": "node1",
            "memory_mib": 96,
            "start": True,
            "group": "walk",
            "disks": [{"pool": "shared", "source": image}],
            # Rows for the NIC controls, one of them filtered by the group and rate-limited.
            "nics": [
                {"network": "user"},
                {"network": "walk-net", "security_groups": ["walk-sg"], "egress_mbps": 100},
            ],
        },
    )
    api.wait_task(running["task"])
    snapshot = api.ok("POST", f"/vms/{running['vm']}/snapshots", json={"name": "walk"})
    api.wait_task(snapshot["task"])  # a row for the snapshot controls
    api.wait_task(
        api.ok("POST", "/pools/shared/volumes", json={"name": "spare", "size": 1 << 20})["task"]
    )
    api.ok("POST", "/pools", json={"name": "hci", "type": "ardfs", "protection": "rf1"})
    disk = f"{cluster.nodes[0].state_dir}/walk-disk"
    api.ok("POST", "/pools/hci/disks", json={"node": cluster.nodes[0].name, "path": disk})
    for lun in ("walk-lun", "walk-spare"):  # rows for the iSCSI export and unexport controls
        made = api.ok("POST", "/pools/hci/volumes", json={"name": lun, "size": 1 << 22})
        api.wait_task(made["task"])
    esx = {"initiators": ["iqn.1998-01.com.vmware:walk"]}
    api.ok("POST", "/pools/hci/volumes/walk-lun/iscsi", json=esx)
    api.ok("POST", "/pools", json={"name": "san", "type": "block", "path": "/dev", "pattern": "x*"})
    api.wait_task(api.ok("POST", "/nodes/node3/maintenance/enter")["task"])  # its exit button
    api.ok("POST", "/users", json={"name": "someone", "role": "viewer", "password": "12345678"})
    api.ok("POST", "/tokens", json={"description": "walk"})
    grant = {"user": "someone", "role": "operator", "scope": "group", "name": "walk"}
    api.ok("POST", "/grants", json=grant)  # a row for the grant controls
    # A row for the lock controls: one failed login of a name nobody has.
    failed = httpx.post(
        f"{api.url}/api/v1/auth/login", json={"username": "x", "password": "y"}, verify=api.tls
    )
    assert failed.status_code == 401
    # Rows for the alert controls: a rule of the administrator's that fires on every node (the
    # ConfigDB is up), one of its alerts, a silence and a channel.
    up = {"name": "walk-up", "metric": "heron_configdb_up", "op": ">=", "value": 1}
    api.ok("PUT", "/alerts/rules/walk-up", json={**up, "for_seconds": 0})
    wait_for(
        lambda: any(a["rule"] == "walk-up" for a in api.ok("GET", "/alerts?state=firing")),
        120,
        "an alert of the rule walk-up",
        interval=1,
    )
    silence = {"rule": "walk-up", "matchers": {"node": "node2"}, "duration": 3600}
    api.ok("POST", "/alerts/silences", json=silence)
    hook = {"kind": "webhook", "url": "http://127.0.0.1:9/"}
    api.ok("PUT", "/alerts/channels/walk", json={"name": "walk", "settings": hook})
    api.wait_task(api.ok("POST", "/support/bundles", json={})["id"])  # a row for its controls
    # A row for the import source controls (scan, remove): a folder on a node.
    source = {"name": "walk-ds", "type": "directory", "path": str(cluster.dir), "node": "node1"}
    api.ok("POST", "/imports/sources", json=source)
    return {"vm": running["vm"]}


def walk(page: Page, ui: str, vm_id: str) -> set[str]:
    found: set[str] = set()
    menu = page.eval_on_selector_all("nav#nav a", "els => els.map(e => e.getAttribute('href'))")
    assert len(menu) >= 7, menu
    for path in menu:
        page.goto(f"{ui}{path}")
        found |= offered(page)
    for path in ("/vms/new", "/vms/batch"):  # reached by links, not from the menu
        page.goto(f"{ui}{path}")
        found |= offered(page)
    for path in ("/nodes",):  # the Add-a-node card opens on a click
        page.goto(f"{ui}{path}")
        settle(page)
        if page.locator("[data-testid=join-toggle]").count():
            page.click("[data-testid=join-toggle]")
            found |= offered(page)
    page.goto(f"{ui}/vms/{vm_id}")
    settle(page)
    for tab in page.eval_on_selector_all(
        "[role=tab]", "els => els.map(e => e.dataset.testid.replace('tab-', ''))"
    ):
        page.goto(f"{ui}/vms/{vm_id}?tab={tab}")
        found |= offered(page)
    page.goto(f"{ui}/alerts")
    settle(page)
    for tab in page.eval_on_selector_all(
        "[role=tab]", "els => els.map(e => e.dataset.testid.replace('tab-', ''))"
    ):
        page.goto(f"{ui}/alerts?tab={tab}")
        found |= offered(page)
    page.goto(f"{ui}/storage")
    settle(page)
    pools = page.eval_on_selector_all(
        "[data-testid=pool-select] option", "els => els.map(e => e.value)"
    )
    for pool in pools:
        page.select_option("[data-testid=pool-select]", pool)
        found |= offered(page)
    return found


def test_every_mutating_operation_is_offered_by_the_ui(
    desktop: BrowserContext,
    ui: str,
    admin_password: str,
    one_of_everything: dict[str, Any],
    cluster3: tuple[DevCluster, str],
) -> None:
    wanted = schema_operations(ui, cluster3[0].tls()) - set(NOT_FOR_PEOPLE)
    assert len(wanted) >= 29, wanted
    page = desktop.new_page()
    page.goto(ui)
    found = offered(page)  # the login page
    log_in(page, ui, admin_password)
    found |= walk(page, ui, one_of_everything["vm"])

    unknown = found - wanted
    assert not unknown, f"data-op names operations the API does not have: {sorted(unknown)}"
    missing = wanted - found - set(NOT_ON_THE_WALK)
    assert not missing, f"no way in the UI to: {sorted(missing)}"
    stale = set(NOT_ON_THE_WALK) & found
    assert not stale, f"listed as not on the walk, but offered there: {sorted(stale)}"
    source = "\n".join(p.read_text() for p in WEB_SOURCE.rglob("*.vue"))
    for op in NOT_ON_THE_WALK:
        assert re.search(rf'data-op="{re.escape(op)}"', source), f"{op}: offered nowhere"
