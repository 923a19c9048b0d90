"""The web UI in a real browser (Debian's chromium) against a real 3-node devcluster.

One browser session walks the acceptance path in order: log in, create a VM from the test
guest image on another node than the one serving the UI, start it, see it running through
the live stream without a reload, read its serial console, open its graphical console
(noVNC through the API's websocket relay), check both languages on every view, and look at
it all at phone width. Screenshots of the main views go to tests/e2e/screenshots/.
"""

import json
import re
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
from browsing import BOOT, STEP, assert_fits, assert_translated, log_in, settle, shot
from playwright.sync_api import Browser, BrowserContext, Page, Request, expect
from support import Api, websocket_first_message
from websockets.exceptions import InvalidStatus

from heron.devcluster import DevCluster

pytestmark = pytest.mark.integration

VM_NAME = "web1"

# Every main view, by path; the VM's own page is added once it exists.
VIEWS = [
    "/",
    "/nodes",
    "/cluster",
    "/vms",
    "/vms/new",
    "/vms/batch",
    "/groups",
    "/storage",
    "/tasks",
    "/alerts",
    "/events",
    "/access",
]
VM_TABS = [
    "summary",
    "metrics",
    "hardware",
    "disks",
    "nics",
    "snapshots",
    "guest",
    "serial",
    "console",
]


@pytest.fixture(scope="module")
def page(desktop: BrowserContext) -> Page:
    return desktop.new_page()


@pytest.fixture(scope="module")
def vm_state() -> dict[str, Any]:
    """What the tests learn along the way (the VM's id), for the ones after."""
    return {}


def test_login_refuses_a_wrong_password_then_logs_in(
    page: Page, ui: str, admin_password: str, screenshots: Path
) -> None:
    page.goto(ui)
    expect(page).to_have_url(re.compile(r"/login"))
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", "not-the-password")
    page.click("[data-testid=login-submit]")
    error = page.locator("[data-testid=error]")
    expect(error).to_contain_text("401")
    expect(error).to_contain_text("wrong user name or password")
    shot(page, screenshots, "login-refused")

    log_in(page, ui, admin_password)
    expect(page.locator("[data-testid=leader]")).to_have_text(re.compile(r"node"))
    expect(page.locator("[data-testid=live]")).to_have_attribute("data-live", "true")
    shot(page, screenshots, "overview")


def test_create_a_vm_from_an_image_with_the_wizard(
    page: Page, ui: str, image: str, cluster3: tuple[DevCluster, str], vm_state: dict[str, Any]
) -> None:
    cluster, _ = cluster3
    other_node = cluster.nodes[1].name  # not the node serving the UI: consoles are relayed
    page.click("[data-testid=nav-vms]")
    page.click("[data-testid=vm-new]")
    page.fill("[data-testid=create-name]", VM_NAME)
    page.fill("input[name=memory_mib]", "128")
    # The hardware comes from the API's schema: what the API takes, the wizard asks.
    expect(page.locator("select[name=firmware] option")).to_have_text(["bios", "uefi"])
    expect(page.locator("input[name='ha.enabled']")).not_to_be_checked()
    page.select_option("select[name=node]", other_node)
    page.click("[data-testid=create-next]")
    page.select_option("[data-testid=create-image]", image)
    page.select_option("[data-testid=create-pool]", image.split("/")[0])
    page.click("[data-testid=create-next]")
    page.click("[data-testid=create-next]")
    expect(page.locator("[data-testid=create-start]")).to_be_visible()
    page.uncheck("[data-testid=create-start]")  # started in the next test, from its page
    page.click("[data-testid=create-submit]")

    expect(page).to_have_url(re.compile(r"/vms/[0-9a-f-]{8,}"))
    vm_state["id"] = page.url.rsplit("/", 1)[1].split("?")[0]
    # The create task copies the image, then the node reports the VM switched off.
    expect(page.locator("[data-testid=vm-state]")).to_have_attribute(
        "data-state", "shutoff", timeout=120_000
    )


def test_start_and_see_it_running_without_reload(
    page: Page, screenshots: Path, vm_state: dict[str, Any]
) -> None:
    page.evaluate("window.__sameDocument = true")
    page.click("[data-testid=vm-start]")
    expect(page.locator("[data-testid=vm-state]")).to_have_attribute(
        "data-state", "running", timeout=STEP * 2
    )
    assert page.evaluate("window.__sameDocument === true"), "the page was reloaded"

    page.click("[data-testid=tab-serial]")
    expect(page.locator("[data-testid=serial-screen]")).to_contain_text(
        f"HERON-GUEST-READY uuid={vm_state['id']}", timeout=BOOT
    )
    shot(page, screenshots, "vm-serial")
    page.click("[data-testid=tab-summary]")
    shot(page, screenshots, "vm-summary")


def test_the_vm_list_shows_it_running(page: Page, screenshots: Path) -> None:
    page.click("[data-testid=nav-vms]")
    row = page.locator(f"tr[data-vm={VM_NAME}]")
    expect(row.locator(".badge")).to_have_attribute("data-state", "running")
    page.fill("[data-testid=vm-filter]", "no-such-vm")
    expect(row).to_have_count(0)
    page.fill("[data-testid=vm-filter]", VM_NAME[:3])
    expect(row).to_have_count(1)
    shot(page, screenshots, "vms")


def test_graphical_console_connects(
    page: Page, ui: str, screenshots: Path, vm_state: dict[str, Any]
) -> None:
    page.goto(f"{ui}/vms/{vm_state['id']}?tab=console")
    console = page.locator("[data-testid=vnc]")
    expect(console).to_have_attribute("data-rfb-state", "connected")
    expect(console.locator("canvas")).to_be_visible()
    shot(page, screenshots, "vm-console")


def test_destructive_actions_ask_first(page: Page, ui: str, vm_state: dict[str, Any]) -> None:
    page.goto(f"{ui}/vms/{vm_state['id']}")
    page.click("[data-testid=vm-stop]")
    dialog = page.locator("[data-testid=confirm]")
    expect(dialog).to_be_visible()
    expect(page.locator("[data-testid=confirm-ok]")).to_be_focused()
    page.keyboard.press("Escape")
    expect(dialog).to_have_count(0)
    expect(page.locator("[data-testid=vm-state]")).to_have_attribute("data-state", "running")


def test_api_errors_name_the_field(page: Page, ui: str) -> None:
    page.goto(f"{ui}/vms/new")
    page.fill("[data-testid=create-name]", "Not A Name!")
    for _ in range(3):
        page.click("[data-testid=create-next]")
    page.click("[data-testid=create-submit]")
    error = page.locator("[data-testid=error]")
    expect(error).to_contain_text("422")
    # (its disk's pool may be named too: under load the pools had not arrived yet)
    expect(error.locator("code").filter(has_text="body.name")).to_be_visible()


def test_upload_an_image(page: Page, ui: str, image: str, tmp_path: Path) -> None:
    disk = tmp_path / "blank.raw"
    disk.write_bytes(b"\0" * (4 * 1024 * 1024))
    page.goto(f"{ui}/storage")
    page.select_option("[data-testid=pool-select]", image.split("/")[0])
    form = page.locator("[data-testid=upload-form]")
    form.locator("input[type=file]").set_input_files(str(disk))
    form.locator("input[name=name]").fill("uploaded")
    form.locator("select[name=format]").select_option("raw")
    # A slow uplink, so that the progress of the upload is there to be seen.
    network = page.context.new_cdp_session(page)
    network.send("Network.enable")
    slow = {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": 1 << 20}
    network.send("Network.emulateNetworkConditions", slow)
    try:
        form.locator("button[type=submit]").click()
        expect(form.locator("[role=progressbar]")).to_be_visible()
    finally:
        network.send("Network.emulateNetworkConditions", {**slow, "uploadThroughput": -1})
        network.detach()
    row = page.locator("tr[data-volume=uploaded]")
    expect(row.locator(".badge")).to_have_attribute("data-state", "ready")
    expect(row).to_contain_text("4 MiB")


POOL_TYPES = ["dir", "nfs", "iscsi", "block", "rbd", "ardfs"]


def is_pool_create(request: Request) -> bool:
    return request.method == "POST" and request.url.endswith("/api/v1/pools")


def test_create_an_nfs_pool_with_the_form(page: Page, ui: str, screenshots: Path) -> None:
    page.goto(f"{ui}/storage")
    expect(page.locator("[data-testid=pool-select]")).to_have_value("local")  # the first pool
    form = page.locator("[data-testid=pool-form]")
    form.locator("input[name=name]").fill("nas")
    form.locator("[data-testid=pool-type-select]").select_option("nfs")
    # Only the fields of the type, each with its hint.
    for field in ("server", "export", "options"):
        expect(form.locator(f"input[name={field}]")).to_be_visible()
    others = "input[name=path], input[name=shared], input[name=portal]"
    expect(form.locator(others)).to_have_count(0)
    expect(form.locator(".hint")).to_have_count(4)  # the type's and one per field
    form.locator("input[name=server]").fill("nas1.example")
    settle(page)
    shot(page, screenshots, "storage-pool-types")

    # No export: the API refuses, naming what is missing; empty fields are not sent.
    with page.expect_request(is_pool_create) as sent:
        form.locator("[data-testid=pool-submit]").click()
    assert sent.value.post_data_json == {"name": "nas", "type": "nfs", "server": "nas1.example"}
    error = form.locator("[data-testid=error]")
    expect(error).to_contain_text("422")
    expect(error.locator("li")).to_contain_text("export")

    form.locator("input[name=export]").fill("/srv/vm")
    with page.expect_request(is_pool_create) as sent:
        form.locator("[data-testid=pool-submit]").click()
    body = {"name": "nas", "type": "nfs", "server": "nas1.example", "export": "/srv/vm"}
    assert sent.value.post_data_json == body
    expect(error).to_have_count(0)
    expect(page.locator("[data-testid=pool-select]")).to_have_value("nas")
    expect(page.locator("[data-testid=pool-type]")).to_have_text("NFS")
    expect(page.locator("[data-testid=pool-where]")).to_have_text("nas1.example:/srv/vm")
    expect(page.locator("[data-testid=pool-header]")).to_contain_text("shared by every node")
    # Heron makes the volumes of an NFS pool: nothing to scan, volumes can be created.
    expect(page.locator("[data-testid=pool-scan]")).to_have_count(0)
    expect(page.locator("[data-testid=volume-form]")).to_be_visible()


def test_scan_a_block_pool(page: Page, ui: str, api: Api, screenshots: Path) -> None:
    pool = {"name": "san", "type": "block", "path": "/dev", "pattern": "heron-none-*"}
    api.ok("POST", "/pools", json=pool)
    page.goto(f"{ui}/storage")
    page.select_option("[data-testid=pool-select]", "san")
    expect(page.locator("[data-testid=pool-where]")).to_have_text("/dev/heron-none-*")
    # Its volumes are the array's: found by a scan, never created, imported or uploaded here.
    expect(page.locator("[data-testid=lun-hint]")).to_be_visible()
    expect(page.locator("[data-testid$=-form]:not([data-testid=pool-form])")).to_have_count(0)
    expect(page.locator("[data-testid=location-head]")).to_be_visible()

    page.click("[data-testid=pool-scan]")
    scan = page.locator("[data-testid=scan-task]")
    expect(scan).to_have_attribute("data-state", "succeeded")
    expect(scan.locator(".badge")).to_have_attribute("data-state", "succeeded")
    expect(scan.locator("[role=progressbar]")).to_have_attribute("aria-valuenow", "100")
    added = page.locator("[data-testid=scan-added]")
    expect(added).to_have_attribute("data-count", "0")
    expect(added).to_have_text("none")
    shot(page, screenshots, "storage-scan")

    # The scan, the LUN pool and every type of the pool form, in Russian too.
    form = page.locator("[data-testid=pool-form]")
    page.select_option("[data-testid=language]", "ru")
    try:
        expect(added).to_have_text("нет")
        for kind in POOL_TYPES:
            form.locator("[data-testid=pool-type-select]").select_option(kind)
            settle(page)
            assert_translated(page, "ru", f"/storage (block pool, form for {kind})")
    finally:
        page.select_option("[data-testid=language]", "en")
    for kind in POOL_TYPES:
        form.locator("[data-testid=pool-type-select]").select_option(kind)
        assert_translated(page, "en", f"/storage (block pool, form for {kind})")


def test_an_ardfs_pool_and_its_disks(
    page: Page, ui: str, screenshots: Path, cluster3: tuple[DevCluster, str]
) -> None:
    cluster, _ = cluster3
    node1 = cluster.nodes[0]
    path = f"{node1.state_dir}/ardfs-ui-disk"
    page.goto(f"{ui}/storage")
    form = page.locator("[data-testid=pool-form]")
    form.locator("input[name=name]").fill("hci")
    form.locator("[data-testid=pool-type-select]").select_option("ardfs")
    protection = form.locator("select[name=protection]")
    expect(protection).to_have_value("rf2")
    expect(protection.locator("option")).to_have_count(5)
    expect(form.locator("input[name=path], input[name=shared]")).to_have_count(0)
    protection.select_option("rf1")
    with page.expect_request(is_pool_create) as sent:
        form.locator("[data-testid=pool-submit]").click()
    assert sent.value.post_data_json == {"name": "hci", "type": "ardfs", "protection": "rf1"}
    expect(page.locator("[data-testid=pool-select]")).to_have_value("hci")
    expect(page.locator("[data-testid=pool-type]")).to_have_text("ARDFS")
    expect(page.locator("[data-testid=pool-where]")).to_have_text("rf1")
    expect(page.locator("[data-testid=pool-header]")).to_contain_text("shared by every node")
    # Raw volumes only; who owns each one and since which epoch.
    expect(page.locator("[data-testid=volume-form] select[name=format] option")).to_have_text(
        ["raw"]
    )
    expect(page.locator("[data-testid=owner-head]")).to_be_visible()
    expect(page.locator("[data-testid=epoch-head]")).to_be_visible()

    disks = page.locator("[data-testid=ardfs-disks]")
    add = disks.locator("[data-testid=disk-form]")
    add.locator("select[name=node]").select_option(node1.name)
    add.locator("input[name=path]").fill(path)
    with page.expect_response(lambda r: r.url.endswith("/pools/hci/disks")) as reply:
        add.locator("[data-testid=disk-submit]").click()
    assert reply.value.status == 201
    expect(add.locator("[data-testid=error]")).to_have_count(0)
    row = disks.locator(f"tr[data-member={node1.name}]")
    expect(row.locator("[data-testid=member-disks] code")).to_have_text([path])
    expect(row).to_contain_text("default")  # no site given
    # Its agent registers node1's heron-io in the pool; the table reads members again.
    expect(row.locator("[data-testid=member-address] code")).to_have_text(
        re.compile(r"^\S+:\d+$"), timeout=STEP
    )

    # The same directory again: the API's refusal, as it came.
    add.locator("input[name=path]").fill(path)
    add.locator("[data-testid=disk-submit]").click()
    error = add.locator("[data-testid=error]")
    expect(error).to_contain_text("409")
    expect(error).to_contain_text("already a disk of pool hci")
    expect(row.locator("[data-testid=member-disks] code")).to_have_count(1)
    settle(page)
    shot(page, screenshots, "storage-ardfs")

    page.select_option("[data-testid=language]", "ru")
    try:
        expect(error).to_contain_text("Запрос отклонён")
        form.locator("[data-testid=pool-type-select]").select_option("ardfs")
        settle(page)
        assert_translated(page, "ru", "/storage (ardfs pool)")
    finally:
        page.select_option("[data-testid=language]", "en")
    assert_translated(page, "en", "/storage (ardfs pool)")


def test_tasks_show_progress_and_logs(page: Page, ui: str) -> None:
    page.goto(f"{ui}/tasks")
    create = page.locator("tr[data-kind='vm.create']").first
    expect(create.locator("[role=progressbar]")).to_have_attribute("aria-valuenow", "100")
    expect(create).to_contain_text(VM_NAME)
    create.locator("button.link").click()
    expect(page.locator("tr.details pre.log")).to_be_visible()


def test_maintenance_enter_and_exit(
    page: Page, ui: str, screenshots: Path, cluster3: tuple[DevCluster, str]
) -> None:
    cluster, _ = cluster3
    empty = cluster.nodes[2].name
    page.goto(f"{ui}/nodes")
    card = page.locator(f"[data-node={empty}]")
    card.get_by_role("button", name="Enter maintenance").click()
    page.click("[data-testid=confirm-ok]")
    expect(card.locator(".badge").first).to_have_attribute("data-state", "maintenance")
    shot(page, screenshots, "nodes-maintenance")
    card.get_by_role("button", name="Exit maintenance").click()
    expect(card.locator(".badge").first).to_have_attribute("data-state", "online")


def test_reserve_cores_of_a_node_for_io(
    page: Page, ui: str, api: Api, screenshots: Path, cluster3: tuple[DevCluster, str]
) -> None:
    cluster, _ = cluster3
    node2 = cluster.nodes[1].name
    cores = api.ok("GET", f"/nodes/{node2}")["cpus"]
    if cores < 2:
        pytest.skip("one core: none can be reserved for I/O")
    page.goto(f"{ui}/nodes")
    card = page.locator(f"[data-node={node2}]")
    shown = card.locator("[data-testid=io-reservation]")
    expect(shown).to_have_text("nothing")
    card.locator("[data-testid=io-edit]").click()
    form = card.locator("[data-testid=io-form]")
    try:
        # Every core: the API refuses, naming the field.
        form.locator("input[name=cpus]").fill(str(cores))
        form.locator("[data-testid=io-submit]").click()
        error = form.locator("[data-testid=error]")
        expect(error).to_contain_text("422")
        expect(error.locator("code")).to_have_text("body.cpus")
        page.select_option("[data-testid=language]", "ru")
        try:
            expect(error).to_contain_text("Запрос отклонён")
            settle(page)
            assert_translated(page, "ru", "/nodes (I/O reservation form)")
        finally:
            page.select_option("[data-testid=language]", "en")

        form.locator("input[name=cpus]").fill("1")
        form.locator("input[name=memory_mib]").fill("256")
        form.locator("[data-testid=io-submit]").click()
        expect(form).to_have_count(0)
        expect(shown).to_have_attribute("data-cpus", "1")
        expect(shown).to_have_text(f"1 of {cores} cores, 256 MiB")
        settle(page)
        shot(page, screenshots, "nodes-io")
    finally:
        api.ok("PUT", f"/nodes/{node2}/io", json={"cpus": 0, "memory_mib": 0})
    expect(shown).to_have_text("nothing")


def test_api_tokens_are_shown_once_and_revoked(page: Page, ui: str) -> None:
    page.goto(f"{ui}/access")
    page.fill("input[maxlength='256']", "automation")
    page.get_by_role("button", name="New API token").click()
    expect(page.locator("[data-testid=new-token]")).to_contain_text("hrn_")
    row = page.locator("[data-testid=token-table] tr", has_text="automation")
    expect(row).to_have_count(1)
    row.get_by_role("button", name="Revoke").click()
    page.click("[data-testid=confirm-ok]")
    expect(row).to_have_count(0)


def test_every_view_in_russian_and_back_in_english(
    page: Page, ui: str, screenshots: Path, vm_state: dict[str, Any]
) -> None:
    views = [*VIEWS, *(f"/vms/{vm_state['id']}?tab={tab}" for tab in VM_TABS)]
    page.goto(ui)
    for language, word in (("ru", "Обзор"), ("en", "Overview")):
        page.select_option("[data-testid=language]", language)
        expect(page.locator("[data-testid=nav-overview]")).to_have_text(re.compile(word))
        for path in views:
            # Navigation inside the app (no reload), as a user would go.
            page.evaluate("(path) => { history.pushState({}, '', path); "
                          "dispatchEvent(new PopStateEvent('popstate')); }", path)  # fmt: skip
            expect(page.locator("main h1").first).to_be_visible()
            settle(page)
            assert_translated(page, language, path)
            if path in VIEWS:
                name = path.strip("/").replace("/", "-") or "overview"
                shot(page, screenshots, f"{language}-{name}")
    assert page.evaluate("document.documentElement.lang") == "en"


def test_phone_width_without_horizontal_scrolling(
    phone: Page, ui: str, admin_password: str, screenshots: Path, vm_state: dict[str, Any]
) -> None:
    phone.goto(ui)
    expect(phone.locator("[data-testid=login-submit]")).to_have_text("Войти")
    assert_translated(phone, "ru", "/login")
    log_in(phone, ui, admin_password)
    for path in [*VIEWS, f"/vms/{vm_state['id']}"]:
        phone.goto(f"{ui}{path}")
        expect(phone.locator("main h1").first).to_be_visible()
        assert_fits(phone, path)
        assert_translated(phone, "ru", path)
        name = path.strip("/").replace("/", "-") or "overview"
        if not name.startswith("vms-") or name == "vms-new":
            shot(phone, screenshots, f"phone-{name}")
    shot(phone, screenshots, "phone-vm")
    phone.goto(f"{ui}/storage")
    for pool in ("nas", "san", "hci"):
        phone.select_option("[data-testid=pool-select]", pool)
        for kind in POOL_TYPES:
            phone.select_option("[data-testid=pool-type-select]", kind)
            assert_fits(phone, f"/storage ({pool}, {kind})")
    shot(phone, screenshots, "phone-storage-ardfs")
    phone.select_option("[data-testid=pool-type-select]", "iscsi")
    assert_translated(phone, "ru", "/storage (form for iscsi)")
    shot(phone, screenshots, "phone-storage-pool-types")
    phone.click(".menu-button")
    expect(phone.locator("[data-testid=nav-tasks]")).to_be_visible()
    shot(phone, screenshots, "phone-menu")


def vnc_banner(url: str, vm_id: str, ticket: str, tls: ssl.SSLContext) -> bytes:
    ws_url = url.replace("https://", "wss://") + f"/api/v1/vms/{vm_id}/console/vnc?ticket={ticket}"
    return websocket_first_message(ws_url, tls, ["binary"], timeout=STEP / 1000)


def test_console_tickets_are_checked_and_used_once(
    cluster3: tuple[DevCluster, str], api: Api, vm_state: dict[str, Any]
) -> None:
    cluster, _ = cluster3
    vm_id = vm_state["id"]
    for node in cluster.nodes[:2]:  # relayed by node1, and direct on node2 where the VM runs
        with pytest.raises(InvalidStatus):
            vnc_banner(node.url, vm_id, "", cluster.tls())
        with pytest.raises(InvalidStatus):
            vnc_banner(node.url, vm_id, "forged", cluster.tls())
        ticket = api.ok("POST", f"/vms/{vm_id}/console/ticket")["ticket"]
        assert vnc_banner(node.url, vm_id, ticket, cluster.tls()).startswith(b"RFB 003.")
        with pytest.raises(InvalidStatus):
            vnc_banner(node.url, vm_id, ticket, cluster.tls())


def test_viewers_hear_only_what_they_may_read(api: Api, vm_state: dict[str, Any]) -> None:
    assert httpx.get(f"{api.url}/api/v1/stream", verify=api.tls).status_code == 401
    api.ok("POST", "/users", json={"name": "watcher", "role": "viewer", "password": "watch-only"})
    login = {"username": "watcher", "password": "watch-only"}
    viewer = api.as_token(api.ok("POST", "/auth/login", json=login)["token"])
    assert viewer.post(f"/vms/{vm_state['id']}/console/ticket").status_code == 403
    # The serial log holds what the guest printed: the console permission, not a viewer's.
    refused = viewer.get(f"/vms/{vm_state['id']}/console/serial")
    assert refused.status_code == 403 and "console" in refused.json()["message"]

    headers = {"authorization": f"Bearer {viewer.token}"}
    with httpx.stream(
        "GET", f"{api.url}/api/v1/stream", headers=headers, timeout=STEP / 1000, verify=api.tls
    ) as s:
        lines = s.iter_lines()
        assert next(line for line in lines if line.startswith("event:")) == "event: hello"
        # A change a viewer may not read (a user), then one it may (a group): in etcd's order.
        api.ok("POST", "/users", json={"name": "hidden", "role": "viewer", "password": "12345678"})
        api.ok("POST", "/groups", json={"name": "seen", "placement": "spread"})
        heard: list[str] = []
        event = ""
        for line in lines:
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event == "change":
                heard.extend(c["kind"] for c in json.loads(line[5:])["changes"])
                if "groups" in heard:
                    break
        assert "users" not in heard, heard


def test_a_viewer_is_not_offered_what_it_may_not_do(
    browser: Browser, ui: str, vm_state: dict[str, Any]
) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
    context.set_default_timeout(STEP)
    try:
        viewer = context.new_page()
        log_in(viewer, ui, "watch-only", user="watcher")
        expect(viewer.locator("[data-testid=who]")).to_contain_text("viewer")
        viewer.click("[data-testid=nav-vms]")
        expect(viewer.locator(f"tr[data-vm={VM_NAME}]")).to_have_count(1)
        expect(viewer.locator("[data-testid=vm-new]")).to_have_count(0)
        viewer.goto(f"{ui}/vms/{vm_state['id']}")
        expect(viewer.locator("[data-testid=vm-state]")).to_be_visible()
        expect(viewer.locator("[data-testid^=vm-shutdown], [data-testid=vm-delete]")).to_have_count(
            0
        )
        expect(viewer.locator("[data-testid=tab-hardware]")).to_have_count(1)
        expect(viewer.locator("[data-testid=tab-serial], [data-testid=tab-console]")).to_have_count(
            0
        )
        viewer.goto(f"{ui}/vms/new")  # not for viewers: back to the overview
        expect(viewer).to_have_url(re.compile(r"/$"))
    finally:
        context.close()


def test_every_node_serves_the_ui_and_api_paths_stay_api(
    cluster3: tuple[DevCluster, str],
) -> None:
    cluster, _ = cluster3
    for node in cluster.nodes:
        # a deep link of the UI
        reply = httpx.get(f"{node.url}/vms/some-vm?tab=console", verify=cluster.tls())
        assert reply.status_code == 200 and "text/html" in reply.headers["content-type"]
        assert '<div id="app">' in reply.text
    missing = httpx.get(f"{cluster.nodes[0].url}/api/v1/no-such-thing", verify=cluster.tls())
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


def test_keyboard_moves_between_tabs(page: Page, ui: str, vm_state: dict[str, Any]) -> None:
    page.goto(f"{ui}/vms/{vm_state['id']}")
    page.keyboard.press("Tab")
    expect(page.locator(".skip")).to_be_focused()
    page.locator("[data-testid=tab-summary]").focus()
    page.keyboard.press("ArrowRight")
    expect(page.locator("[data-testid=tab-metrics]")).to_be_focused()
    page.keyboard.press("ArrowRight")
    expect(page.locator("[data-testid=tab-hardware]")).to_be_focused()
    page.keyboard.press("ArrowRight")
    expect(page.locator("[data-testid=tab-disks]")).to_have_attribute("aria-selected", "true")
    expect(page.locator("[data-testid=tab-disks]")).to_be_focused()
    expect(page.locator("[role=tabpanel] table")).to_contain_text("disk0")


def test_shut_down_and_delete_the_vm(
    page: Page, ui: str, screenshots: Path, vm_state: dict[str, Any]
) -> None:
    page.goto(f"{ui}/vms/{vm_state['id']}")
    page.click("[data-testid=vm-shutdown]")
    page.click("[data-testid=confirm-ok]")
    expect(page.locator("[data-testid=vm-state]")).to_have_attribute(
        "data-state", "shutoff", timeout=120_000
    )
    page.check("text=Also delete its volumes")
    page.click("[data-testid=vm-delete]")
    expect(page.locator("[data-testid=confirm]")).to_contain_text(VM_NAME)
    page.click("[data-testid=confirm-ok]")
    expect(page).to_have_url(re.compile(r"/vms$"))
    expect(page.locator(f"tr[data-vm={VM_NAME}]")).to_have_count(0)


def test_logout_ends_the_session(page: Page, ui: str) -> None:
    page.goto(ui)
    token = page.evaluate("JSON.parse(sessionStorage.getItem('heron.session')).token")
    page.click("[data-testid=logout]")
    expect(page).to_have_url(re.compile(r"/login"))
    status = page.evaluate(
        "async (token) => (await fetch('/api/v1/auth/whoami', "
        "{headers: {authorization: 'Bearer ' + token}})).status",
        token,
    )
    assert status == 401
