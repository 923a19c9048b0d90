"""The cluster view and the node view's cluster tasks in a real browser, against a 3-node
devcluster: DRS settings through the schema-drawn form (an invalid value gets the API's
field error, a valid one is saved and read back), etcd's members, DRS's status and a decision
it makes with its reason, the join instructions, and a node's leave with its consequences
first. In English, in Russian, and at phone width."""

import re
import time
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import pytest
from browsing import STEP, assert_fits, assert_translated, launch, log_in, settle, shot
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, expect
from playwright.sync_api import Error as PlaywrightError
from support import Api, wait_for

from heron.devcluster import DevCluster
from heron.tls import fingerprint
from heron.tls.certs import make_authority

pytestmark = pytest.mark.integration

DECIDE = 90_000  # ms: DRS checks every half second; the migration is a real one under TCG


@pytest.fixture(scope="module")
def page(desktop: BrowserContext, ui: str, admin_password: str) -> Page:
    page = desktop.new_page()
    log_in(page, ui, admin_password)
    return page


def go(page: Page, ui: str, path: str) -> None:
    page.goto(f"{ui}{path}")
    expect(page.locator("main h1").first).to_be_visible()
    settle(page)


def test_the_cluster_view_shows_the_leader_and_etcds_members(
    page: Page, ui: str, screenshots: Path, cluster3: tuple[DevCluster, str]
) -> None:
    page.goto(ui)
    page.click("[data-testid=nav-cluster]")
    expect(page).to_have_url(re.compile(r"/cluster$"))
    expect(page.locator("[data-testid=cluster-leader]")).to_have_text(re.compile(r"^node\d$"))
    members = page.locator("[data-testid=members] tbody tr")
    expect(members).to_have_count(3)
    expect(page.locator("[data-testid=etcd-leader]")).to_have_count(1)
    expect(members.first).to_contain_text("voter")
    expect(page.locator("[data-testid=no-decisions]")).to_be_visible()
    # The cluster CA's fingerprint, to compare with the browser's, and its certificate.
    ca = cluster3[0].ca_file.read_text()
    expect(page.locator("[data-testid=cluster-ca]")).to_have_text(fingerprint(ca))
    href = page.locator("[data-testid=cluster-ca-download]").get_attribute("href") or ""
    assert unquote(href.split(",", 1)[1]) == ca
    shot(page, screenshots, "cluster")


def test_cluster_settings_are_checked_by_the_api_then_saved(page: Page, ui: str, api: Api) -> None:
    go(page, ui, "/cluster")
    form = page.locator("[data-testid=settings-form]")
    threshold = form.locator("input[name='drs.threshold']")
    threshold.fill("2")
    form.locator("[data-op='PUT /cluster/settings']").click()
    error = form.locator("[data-field='drs.threshold'] [data-testid=field-error]")
    expect(error).to_contain_text("less than or equal to 1")
    expect(form.locator("[data-testid=error]")).to_contain_text("422")
    assert api.ok("GET", "/cluster/settings")["drs"]["threshold"] == 0.2  # nothing changed

    # Host-sized nodes: a threshold of 0.1 % lets two 64 MiB VMs unbalance the cluster, as
    # allocated memory weighs them (measured demand needs half a minute of measurements).
    basis = form.locator("select[name='drs.basis']")
    expect(basis).to_have_value("demand")
    basis.select_option("allocated")
    grace = form.locator("input[name='ha.agent_grace']")
    expect(grace).to_have_value("30")
    grace.fill("45")
    threshold.fill("0.001")
    form.locator("input[name='drs.interval']").fill("0.5")
    form.locator("input[name='drs.hysteresis']").fill("1")
    form.locator("[data-op='PUT /cluster/settings']").click()
    expect(page.locator(".notice").filter(has_text="Cluster settings saved")).to_be_visible()
    expect(error).to_have_count(0)
    go(page, ui, "/cluster")  # read back from the API
    expect(form.locator("input[name='drs.threshold']")).to_have_value("0.001")
    expect(form.locator("input[name='drs.hysteresis']")).to_have_value("1")
    expect(form.locator("select[name='drs.basis']")).to_have_value("allocated")
    expect(page.locator("[data-testid=drs-basis]")).to_have_attribute("data-basis", "allocated")
    assert api.ok("GET", "/cluster/settings")["drs"]["interval"] == 0.5
    assert api.ok("GET", "/cluster/settings")["ha"]["agent_grace"] == 45
    expect(page.locator("[data-testid=drs-state]")).to_contain_text("0.1 %")


def test_drs_proposes_a_move_then_makes_it_with_its_reason(
    page: Page, ui: str, api: Api, screenshots: Path
) -> None:
    for i in range(3):  # no disks: only their firmware runs, which is enough to migrate
        reply = api.ok(
            "POST",
            "/vms",
            json={"name": f"drs{i}", "memory_mib": 64, "node": "node1", "start": True},
        )
        api.wait_task(reply["task"])
    go(page, ui, "/cluster")
    expect(page.locator("[data-testid=drs-spread]")).to_have_attribute("data-exceeded", "true")
    expect(page.locator("[data-load]")).to_have_count(3)
    proposal = page.locator("[data-testid=drs-proposal]")
    expect(proposal).to_contain_text(re.compile(r"move drs\d from node1 to node[23]"))
    expect(proposal).to_contain_text("DRS is off")
    expect(page.locator("[data-testid=drs-apply]")).to_have_count(0)

    # In mode advise, DRS only proposes: the first move is applied by hand (a live migration).
    form = page.locator("[data-testid=settings-form]")
    form.locator("select[name='drs.mode']").select_option("advise")
    form.locator("[data-op='PUT /cluster/settings']").click()
    expect(page.locator("[data-testid=drs-mode]")).to_have_attribute("data-mode", "advise")
    expect(proposal).to_contain_text("applied by hand")
    page.click("[data-testid=drs-apply]")
    expect(page.locator(".notice").filter(has_text=re.compile(r"Migrating drs\d"))).to_be_visible()
    wait = 3 * STEP

    def spread() -> list[int]:
        return sorted(Counter(v["node"] for v in api.ok("GET", "/vms")).values())

    wait_for(lambda: spread() == [1, 2], wait / 1000, "the move applied by hand")
    expect(proposal).to_contain_text(re.compile(r"move drs\d from node1 to node[23]"))

    # Automatic, it makes the next move itself and says why.
    form.locator("select[name='drs.mode']").select_option("automatic")
    form.locator("[data-op='PUT /cluster/settings']").click()
    decision = page.locator("[data-testid=decision]")
    expect(decision).to_have_count(1, timeout=DECIDE)
    expect(decision).to_contain_text(re.compile(r"node1 → node[23]"))
    expect(decision).to_contain_text("memory load spread")
    expect(decision.get_by_role("link", name=re.compile(r"^drs\d$"))).to_be_visible()
    expect(decision.locator("a[href='/tasks']")).to_be_visible()
    shot(page, screenshots, "cluster-drs-decision")
    drs = api.ok("GET", "/cluster/settings")["drs"]
    assert drs["mode"] == "automatic" and drs["enabled"] is True  # as older agents read it
    api.ok("PUT", "/cluster/settings", json={"drs": {**drs, "mode": "off", "enabled": False}})
    [made] = api.ok("GET", "/cluster/drs")["decisions"]
    api.wait_task(made["task"])
    assert spread() == [1, 1, 1]
    expect(proposal).to_contain_text("balanced within the threshold")


def test_join_instructions_are_ready_to_copy(page: Page, ui: str, api: Api) -> None:
    go(page, ui, "/nodes")
    page.click("[data-testid=join-toggle]")
    endpoints = ",".join(api.ok("GET", "/cluster/join")["etcd_endpoints"])
    expect(page.locator("[data-testid=join-endpoints]")).to_have_text(endpoints)
    commands = page.locator("[data-testid=join-command]")
    expect(commands).to_have_count(2)
    expect(commands.first).to_contain_text(f"HERON_ETCD={endpoints}")
    expect(commands.nth(1)).to_contain_text("--etcd-member-ports")
    # etcd speaks TLS: the commands need a one-time token, made on request.
    expect(commands.nth(1)).to_contain_text("--join-token '<token>'")
    page.click("[data-testid=join-token-make]")
    expect(page.locator("[data-testid=join-token-made]")).to_be_visible()
    fingerprint = api.ok("GET", "/auth/ca")["fingerprint"]
    expect(page.locator("[data-testid=join-fingerprint]")).to_have_text(fingerprint)
    expect(commands.nth(1)).not_to_contain_text("<token>")
    expect(commands.nth(1)).to_contain_text(f"--ca-fingerprint {fingerprint}")


def test_leave_shows_its_consequences_first_and_refuses_a_node_with_vms(
    page: Page, ui: str, api: Api, screenshots: Path
) -> None:
    go(page, ui, "/nodes")
    page.locator("[data-node=node1] [data-testid=leave-open]").click()
    dialog = page.locator("[data-testid=leave-dialog]")
    expect(dialog.locator("[data-testid=leave-verdict]")).to_have_attribute(
        "data-can-leave", "false"
    )
    expect(dialog.locator("[data-testid=leave-vms]")).to_contain_text(re.compile(r"drs\d"))
    expect(dialog.locator("[data-testid=leave-confirm]")).to_be_disabled()
    shot(page, screenshots, "nodes-leave-blocked")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_have_count(0)
    assert api.ok("GET", "/nodes/node1")["state"] == "online"

    # A drained node is empty: its VM live-migrates away first.
    empty = "node3"
    api.wait_task(api.ok("POST", f"/nodes/{empty}/maintenance/enter")["task"])
    assert not [v for v in api.ok("GET", "/vms") if v["node"] == empty]
    page.locator(f"[data-node={empty}] [data-testid=leave-open]").click()
    expect(dialog.locator("[data-testid=leave-verdict]")).to_have_attribute(
        "data-can-leave", "true"
    )
    expect(dialog).to_contain_text("kept in maintenance and out of placement")
    shot(page, screenshots, "nodes-leave-plan")
    dialog.locator("[data-op='POST /nodes/{name}/leave']").click()
    expect(page.locator(".notice").filter(has_text=f"{empty} left the cluster")).to_be_visible()
    expect(dialog).to_have_count(0)
    card = page.locator(f"[data-node={empty}]")
    expect(card.locator("[data-testid=node-left]")).to_have_text("left the cluster")
    expect(card.locator("[data-testid=leave-open]")).to_have_count(0)
    expect(card.get_by_role("button", name="Exit maintenance")).to_have_count(0)
    assert api.ok("GET", f"/nodes/{empty}")["state"] == "maintenance"


def test_a_support_bundle_is_built_with_its_progress_then_downloaded(
    page: Page, ui: str, api: Api, screenshots: Path
) -> None:
    go(page, ui, "/cluster")
    support = page.locator("[data-testid=support]")
    support.locator("[data-op='POST /support/bundles']").click()
    task = support.locator("[data-testid=support-task]")
    expect(task.locator("[role=progressbar]")).to_be_visible()
    expect(task).to_have_attribute("data-state", "succeeded", timeout=120_000)
    [bundle] = api.ok("GET", "/support/bundles")
    row = support.locator(f"[data-bundle='{bundle['name']}']")
    expect(row).to_contain_text(bundle["node"])
    shot(page, screenshots, "cluster-support")
    with page.expect_download() as download:
        row.locator("[data-testid=support-download]").click()
    assert download.value.suggested_filename == bundle["name"]
    # Not mailed without a support address: the API's reason shows beside the bundle.
    row.locator("[data-op='POST /support/bundles/{name}/send']").click()
    expect(row.locator("[data-testid=support-send-result]")).to_contain_text("support address")


def test_in_russian(page: Page, ui: str, screenshots: Path) -> None:
    go(page, ui, "/cluster")
    page.select_option("[data-testid=language]", "ru")
    expect(page.locator("[data-testid=nav-cluster]")).to_have_text(re.compile("Кластер"))
    settle(page)
    assert_translated(page, "ru", "/cluster")
    shot(page, screenshots, "ru-cluster")
    go(page, ui, "/nodes")
    page.click("[data-testid=join-toggle]")
    expect(page.locator("[data-testid=join-command]")).to_have_count(2)
    assert_translated(page, "ru", "/nodes (join)")
    page.locator("[data-node=node1] [data-testid=leave-open]").click()
    expect(page.locator("[data-testid=leave-vms]")).to_be_visible()
    assert_translated(page, "ru", "/nodes (leave)")
    shot(page, screenshots, "ru-nodes-leave")
    page.keyboard.press("Escape")
    page.select_option("[data-testid=language]", "en")


def test_at_phone_width(phone: Page, ui: str, admin_password: str, screenshots: Path) -> None:
    log_in(phone, ui, admin_password)

    def fits(where: str) -> None:
        assert_fits(phone, where)
        assert_translated(phone, "ru", where)

    go(phone, ui, "/cluster")
    expect(phone.locator("[data-testid=decision]")).to_have_count(1)
    fits("/cluster")
    shot(phone, screenshots, "phone-cluster")
    go(phone, ui, "/nodes")
    phone.click("[data-testid=join-toggle]")
    expect(phone.locator("[data-testid=join-command]")).to_have_count(2)
    fits("/nodes (join)")
    phone.locator("[data-node=node1] [data-testid=leave-open]").click()
    expect(phone.locator("[data-testid=leave-vms]")).to_be_visible()
    fits("/nodes (leave)")
    shot(phone, screenshots, "phone-nodes-leave")


def test_a_viewer_reads_the_cluster_and_is_offered_no_change(
    browser: Browser, ui: str, api: Api
) -> None:
    api.ok("POST", "/users", json={"name": "onlooker", "role": "viewer", "password": "look-only"})
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
    context.set_default_timeout(STEP)
    try:
        viewer = context.new_page()
        log_in(viewer, ui, "look-only", user="onlooker")
        expect(viewer.locator("[data-testid=who]")).to_contain_text("viewer")
        go(viewer, ui, "/cluster")
        expect(viewer.locator("[data-testid=members] tbody tr")).to_have_count(3)
        expect(viewer.locator("[data-testid=decision]")).to_have_count(1)
        expect(viewer.locator("[data-testid=error]")).to_have_count(0)
        expect(viewer.locator("main [data-op]")).to_have_count(0)
        go(viewer, ui, "/nodes")
        expect(viewer.locator("[data-node=node1]")).to_be_visible()
        expect(viewer.locator("[data-testid=join-card], main [data-op]")).to_have_count(0)
    finally:
        context.close()


def test_the_ui_is_served_over_https_the_browser_trusting_only_the_cluster_ca(
    playwright: Playwright, ui: str, tmp_path: Path
) -> None:
    """The browser of these tests trusts the cluster's CA (see conftest): one that trusts
    another CA is refused the same page, so the pages above really ran over checked HTTPS."""
    assert ui.startswith("https://")
    stranger = tmp_path / "stranger-ca.pem"
    stranger.write_text(make_authority("stranger", time.time()).certificate)
    browser = launch(playwright, stranger)
    try:
        with pytest.raises(PlaywrightError, match="ERR_CERT_AUTHORITY_INVALID"):
            browser.new_page().goto(ui)
    finally:
        browser.close()
