"""The import wizard in a real browser against a devcluster: a datastore folder on node1 made
by qemu-img from the test guest (VMware VMs with VMDK disks, a Hyper-V disk without its
configuration, a VM whose disk is missing) is added as a source and scanned; the blocked VM
cannot be picked, the others can; two are picked (one's vCPUs and memory given, as its
source does not say them), the Check shows the API's reason in place until the source
network is mapped, then the plan; the import's queue reaches succeeded and the VMs are in
the VM list. The view and the imports.parallel setting in English and in Russian, the view
at phone width; no view for an operator, even one who administers a group."""

import re
from pathlib import Path

import pytest
from browsing import STEP, assert_fits, assert_translated, log_in, settle, shot
from datastores import hyperv_disk, vmware_vm, vmware_vm_without_disk
from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect
from support import Api

pytestmark = pytest.mark.integration

IMPORTED = 120_000  # ms: two 25 MiB disks converted and compared, one after the other
MAC = "00:50:56:a1:b2:d1"


@pytest.fixture(scope="module")
def datastore(tmp_path_factory: pytest.TempPathFactory, testguest: Path) -> Path:
    ds = tmp_path_factory.mktemp("datastore")
    vmware_vm(ds, "web01", testguest, "monolithicSparse", MAC)
    vmware_vm(ds, "app03", testguest, "streamOptimized", "00:50:56:a1:b2:d2")
    vmware_vm_without_disk(ds, "lost07", "00:50:56:a1:b2:d3")
    hyperv_disk(ds, "hv04", testguest)
    return ds


@pytest.fixture(scope="module")
def page(desktop: BrowserContext, ui: str, admin_password: str) -> Page:
    page = desktop.new_page()
    log_in(page, ui, admin_password)
    return page


def row(page: Page, name: str) -> Locator:
    return page.locator(f"[data-testid=vm-table] tr[data-vm='{name}']")


def test_add_scan_pick_map_check_import(
    page: Page, ui: str, api: Api, datastore: Path, screenshots: Path
) -> None:
    page.goto(ui)
    page.click("[data-testid=nav-imports]")
    expect(page).to_have_url(re.compile(r"/imports$"))
    expect(page.locator("main h1")).to_have_text("Import")
    settle(page)
    assert_translated(page, "en", "the import view")

    # (1) A folder on node1, added through the schema-drawn form.
    form = page.locator("[data-testid=source-form]")
    form.locator("input[name='source.name']").fill("ds1")
    expect(form.locator("select[name='source.type']")).to_have_value("directory")
    expect(form.locator("input[name='source.server']")).to_have_count(0)  # NFS only
    form.locator("input[name='source.path']").fill(str(datastore))
    form.locator("select[name='source.node']").select_option("node1")
    form.locator("[data-testid=source-submit]").click()
    source = page.locator("[data-testid=source-table] tr[data-source=ds1]")
    expect(source).to_contain_text(str(datastore))

    # An ESXi host over its API: its own fields (the password masked); one that does not
    # answer over TLS is refused on its host field, nothing added.
    form.locator("select[name='source.type']").select_option("vsphere")
    for name in ("host", "port", "user", "password", "fingerprint"):
        expect(form.locator(f"input[name='source.{name}']")).to_have_count(1)
    for name in ("path", "server"):
        expect(form.locator(f"input[name='source.{name}']")).to_have_count(0)
    expect(form.locator("input[name='source.password']")).to_have_attribute("type", "password")
    form.locator("input[name='source.name']").fill("esx-down")
    form.locator("input[name='source.host']").fill("127.0.0.1")
    form.locator("input[name='source.port']").fill("9")
    form.locator("input[name='source.user']").fill("root")
    form.locator("input[name='source.password']").fill("not-shown")
    form.locator("[data-testid=source-submit]").click()
    refused = form.locator("[data-field='source.host'] [data-testid=field-error]")
    expect(refused).to_contain_text("does not answer over TLS")
    expect(page.locator("[data-testid=source-table] tr[data-source=esx-down]")).to_have_count(0)
    form.locator("select[name='source.type']").select_option("directory")

    # (2) Scanned: the VMs found, the blocked one not to be picked.
    source.locator("[data-testid=source-scan]").click()
    expect(page.locator("[data-testid=scan-summary]")).to_contain_text("4 VMs found, 3 of them")
    lost = row(page, "Lost07")
    expect(lost).to_have_attribute("data-importable", "false")
    expect(lost.locator("[data-testid=pick]")).to_be_disabled()
    expect(lost.locator("[data-testid=blocker]")).to_contain_text("lost07.vmdk is not there")
    web = row(page, "Web01")
    expect(web.locator("[data-testid=vm-disk]")).to_contain_text("vmdk (monolithicSparse)")
    expect(web.locator("[data-testid=vm-nic]")).to_contain_text(f"VM Network {MAC}")
    expect(web.locator("[data-testid=warning]").first).to_be_visible()  # vmxnet3 → virtio
    expect(row(page, "App03").locator("[data-testid=pick]")).to_be_enabled()
    hyperv = row(page, "hv04")
    expect(hyperv.locator("[data-testid=vm-disk]")).to_contain_text("vhdx")
    web.locator("[data-testid=pick]").check()
    hyperv.locator("[data-testid=pick]").check()
    hyperv.locator("[data-testid=vm-vcpus]").fill("1")
    hyperv.locator("[data-testid=vm-memory]").fill("128")
    hyperv.locator("[data-testid=vm-name]").fill("hyperv-ui")
    shot(page, screenshots, "import-scan")
    page.click("[data-testid=to-map]")

    # (3) Checked before the network is mapped: the API's reason, where the networks are.
    mapping = page.locator("[data-testid=map-form]")
    expect(mapping.locator("select[name='import.pool']")).to_have_value("local")
    for vsphere_only in ("power_off", "warm"):  # a folder's VMs do not run while copied
        expect(mapping.locator(f"[data-field='import.{vsphere_only}']")).to_have_count(0)
    mapping.locator("[data-testid=import-check]").click()
    networks = mapping.locator("[data-testid=network-map]")
    expect(networks.locator("[data-testid=field-error]")).to_contain_text("'VM Network'")
    expect(mapping.locator("[data-testid=error]")).to_contain_text("422")
    assert not {"web01", "hyperv-ui"} & {v["name"] for v in api.ok("GET", "/vms")}
    networks.locator("select[name='network-VM Network']").select_option("user")
    mapping.locator("[data-testid=import-check]").click()
    plan = page.locator("[data-testid=import-plan]")
    expect(plan.locator("tr[data-planned]")).to_have_count(2)
    expect(plan.locator("tr[data-planned=web01] [data-testid=planned-node]")).to_have_text("node1")
    expect(plan.locator("tr[data-planned=hyperv-ui]")).to_contain_text("local/hyperv-ui-disk0")
    assert not {"web01", "hyperv-ui"} & {v["name"] for v in api.ok("GET", "/vms")}  # dry run
    shot(page, screenshots, "import-plan")

    # (4) Imported: the queue follows both tasks to their end.
    mapping.locator("[data-testid=import-submit]").click()
    queue = page.locator("[data-testid=queue]")
    for name in ("web01", "hyperv-ui"):
        expect(queue.locator(f"tr[data-import='{name}']")).to_have_attribute(
            "data-state", "succeeded", timeout=IMPORTED
        )
    expect(queue.locator("tr[data-import=web01] [data-testid=last-line]")).not_to_be_empty()
    expect(queue.locator("[data-testid=import-cancel]")).to_have_count(0)
    shot(page, screenshots, "import-queue")
    page.click("[data-testid=nav-vms]")
    for name in ("web01", "hyperv-ui"):
        expect(page.locator(f"tr[data-vm='{name}']")).to_be_visible()
    web01 = api.ok("GET", "/vms/web01")
    assert web01["spec"]["nics"][0]["mac"] == MAC and web01["spec"]["nics"][0]["network"] == "user"
    assert api.ok("GET", "/vms/hyperv-ui")["spec"]["vcpus"] == 1


def test_the_view_and_its_setting_in_russian(page: Page, ui: str) -> None:
    page.goto(f"{ui}/cluster")
    settle(page)
    parallel = page.locator("[data-testid=settings-form] [data-field='imports.parallel']")
    expect(parallel).to_contain_text("Imports at once per node")
    expect(parallel.locator("input")).to_have_value("2")
    page.select_option("[data-testid=language]", "ru")
    try:
        expect(parallel).to_contain_text("Одновременных импортов на узле")
        assert_translated(page, "ru", "the cluster settings")
        page.goto(f"{ui}/imports")
        expect(page.locator("main h1")).to_have_text("Импорт")
        expect(page.locator("[data-testid=step-sources]")).to_contain_text("Источник")
        settle(page)
        assert_translated(page, "ru", "the import view")
        page.locator("tr[data-source=ds1] [data-testid=source-open]").click()
        expect(page.locator("[data-testid=scan-summary]")).to_contain_text("можно импортировать")
        expect(row(page, "Lost07").locator("[data-testid=blocker]")).to_contain_text(
            "нельзя импортировать"
        )
        settle(page)
        assert_translated(page, "ru", "the scan's VMs")
        page.click("[data-testid=step-queue]")
        expect(page.locator("[data-testid=queue] tr[data-state=succeeded]")).to_have_count(2)
        settle(page)
        assert_translated(page, "ru", "the import queue")
    finally:
        page.select_option("[data-testid=language]", "en")


def test_the_view_fits_a_phone(
    phone: Page, ui: str, admin_password: str, screenshots: Path
) -> None:
    log_in(phone, ui, admin_password)
    phone.goto(f"{ui}/imports")
    expect(phone.locator("main h1")).to_have_text("Импорт")
    assert_fits(phone, "the import sources on a phone")
    phone.locator("tr[data-source=ds1] [data-testid=source-open]").click()
    expect(row(phone, "Web01")).to_be_visible()
    assert_fits(phone, "the scan's VMs on a phone")
    shot(phone, screenshots, "phone-import-scan")
    phone.click("[data-testid=step-queue]")
    expect(phone.locator("[data-testid=queue] tr[data-state=succeeded]")).to_have_count(2)
    assert_fits(phone, "the import queue on a phone")


def test_no_import_view_below_a_cluster_wide_administrator(
    browser: Browser, ui: str, api: Api
) -> None:
    # An operator who administers a group: the API refuses it imports all the same.
    api.ok("POST", "/groups", json={"name": "imp-group"})
    api.ok("POST", "/users", json={"name": "grouper", "role": "operator", "password": "group-op1"})
    grant = {"user": "grouper", "role": "admin", "scope": "group", "name": "imp-group"}
    api.ok("POST", "/grants", json=grant)
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
    context.set_default_timeout(STEP)
    try:
        page = context.new_page()
        log_in(page, ui, "group-op1", user="grouper")
        expect(page.locator("[data-testid=nav-vms]")).to_be_visible()
        expect(page.locator("[data-testid=nav-imports]")).to_have_count(0)
        page.goto(f"{ui}/imports")  # not theirs: back to the overview
        expect(page).to_have_url(re.compile(r"/$"))
    finally:
        context.close()
