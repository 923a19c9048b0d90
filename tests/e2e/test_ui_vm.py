"""A VM's page in a real browser against a real 3-node devcluster: edit its hardware and
policies (the form drawn from the API's schema, the API's field errors beside the inputs,
pending changes marked, its cloud-init seed among them), live-migrate it with progress and
cancel one, add and grow a disk, type into its serial console, and open its console in a window
of its own; in both languages and at phone width.
"""

import re
from pathlib import Path
from typing import Any

import pytest
from browsing import BOOT, STEP, assert_fits, assert_translated, log_in, open_tab, settle, shot
from playwright.sync_api import BrowserContext, Page, expect
from support import Api

pytestmark = pytest.mark.integration

NAME = "edited"


@pytest.fixture(scope="module")
def script_errors() -> list[str]:
    """Uncaught errors of the page's scripts: a view that throws shows nothing, silently."""
    return []


@pytest.fixture(scope="module")
def page(desktop: BrowserContext, ui: str, admin_password: str, script_errors: list[str]) -> Page:
    page = desktop.new_page()
    page.on("pageerror", lambda error: script_errors.append(str(error)))
    log_in(page, ui, admin_password)
    return page


@pytest.fixture(scope="module")
def vm(api: Api, image: str) -> dict[str, Any]:
    """A running test guest on node2 (the UI is served by node1: consoles are relayed)."""
    api.ok("POST", "/groups", json={"name": "web"})
    body = {
        "name": NAME,
        "memory_mib": 128,
        "node": "node2",
        "start": True,
        "disks": [{"pool": "shared", "source": image}],
    }
    reply = api.ok("POST", "/vms", json=body)
    api.wait_task(reply["task"])
    return api.vm(reply["vm"])


def test_edit_hardware_with_the_apis_reasons_and_pending_marks(
    page: Page, ui: str, api: Api, vm: dict[str, Any], screenshots: Path
) -> None:
    open_tab(page, ui, vm, "hardware")
    form = page.locator("[data-testid=hardware-form]")
    save = form.locator("[data-testid=hardware-save]")
    expect(save).to_be_disabled()  # nothing changed yet
    expect(form.locator("input[name=vcpus]")).to_have_value("1")
    form.locator("input[name=memory_mib]").fill("8")  # below the schema's minimum of 16
    expect(form.locator("[data-field=memory_mib] [data-testid=pending-mark]")).to_have_text(
        "not saved"
    )
    save.click()
    reason = form.locator("[data-field=memory_mib] [data-testid=field-error]")
    expect(reason).to_contain_text("greater than or equal to 16")
    expect(form.locator("[data-testid=error]")).to_contain_text("422")
    assert api.vm(vm["id"])["spec"]["memory_mib"] == 128  # refused: nothing changed

    form.locator("input[name=memory_mib]").fill("128")
    form.locator("input[name=vcpus]").fill("2")
    form.locator("select[name=group]").select_option("web")
    form.locator("input[name='ha.enabled']").check()
    form.locator("input[name='ha.priority']").fill("80")
    save.click()
    pending = form.locator("[data-testid=pending]")
    expect(pending).to_contain_text("vCPUs")
    expect(form.locator("[data-field=vcpus] [data-testid=pending-mark]")).to_have_text(
        "pending until restart"
    )
    expect(save).to_be_disabled()
    spec = api.vm(vm["id"])["spec"]
    assert (spec["vcpus"], spec["group"], spec["ha"]) == (
        2,
        "web",
        {"enabled": True, "priority": 80},
    )
    shot(page, screenshots, "vm-hardware")

    # Out of the group again: the empty choice sends null.
    form.locator("select[name=group]").select_option("")
    save.click()
    expect(save).to_be_disabled()
    assert api.vm(vm["id"])["spec"]["group"] is None

    # A cloud-init seed, set in the same form (user-data keeps its lines): the guest reads it
    # as it boots, so for this running VM it waits for the next start.
    cloud = form.locator("[data-field=cloud_init]")
    cloud.locator("input[name=cloud_init]").check()
    cloud.locator("input[name='cloud_init.hostname']").fill("edited-host")
    cloud.locator("[data-field='cloud_init.users'] [data-testid=item-add]").click()
    cloud.locator("input[name='cloud_init.users.name']").fill("alice")
    cloud.locator("input[name='cloud_init.users.ssh_keys']").fill(KEY)
    cloud.locator("textarea[name='cloud_init.user_data']").fill(USER_DATA)
    mark = form.locator("[data-field=cloud_init] > legend [data-testid=pending-mark]")
    expect(mark).to_have_text("not saved")
    save.click()
    expect(mark).to_have_text("pending until restart")
    expect(pending).to_contain_text("cloud-init")
    expect(cloud.locator("input[name='cloud_init.hostname']")).to_have_value("edited-host")
    shown = api.vm(vm["id"])
    assert shown["spec"]["cloud_init"] == {
        "hostname": "edited-host",
        "users": [{"name": "alice", "ssh_keys": [KEY], "password_hash": None, "sudo": False}],
        "user_data": USER_DATA,
        "network": True,
    }
    assert "cloud_init" in shown["pending"]


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHeronTestKeyOnly alice@test"
USER_DATA = "#cloud-config\npackages: [htop]\n"


def test_add_a_disk_and_grow_it(
    page: Page, ui: str, api: Api, vm: dict[str, Any], screenshots: Path
) -> None:
    open_tab(page, ui, vm, "disks")
    table = page.locator("[data-testid=disk-table]")
    detach = table.locator("tr[data-disk='0'] [data-testid=disk-detach]")
    expect(detach).to_be_disabled()  # it runs: its QEMU still writes to the volume
    add = page.locator("[data-testid=disk-attach-form]")
    add.get_by_label("A new empty volume").check()
    add.locator("select[name=pool]").select_option("shared")
    add.locator("input[name=sizeGiB]").fill("0.5")
    add.locator("select[name=bus]").select_option("scsi")
    add.locator("[data-testid=disk-attach]").click()
    row = table.locator("tr[data-disk='1']")
    expect(row).to_contain_text("edited-disk1")
    expect(row.locator("[data-testid=disk-size]")).to_have_text("512 MiB")
    expect(page.locator(".warn-box")).to_contain_text("next start")

    row.locator("[data-testid=disk-resize]").click()
    row.locator("input[name=size]").fill("1")
    row.locator("[data-testid=disk-resize-submit]").click()
    expect(row.locator("[data-testid=disk-size]")).to_have_text("1 GiB")
    shot(page, screenshots, "vm-disks")
    disks = api.vm(vm["id"])["spec"]["disks"]
    assert len(disks) == 2 and disks[1]["bus"] == "scsi"


def test_type_into_the_serial_console(page: Page, ui: str, vm: dict[str, Any]) -> None:
    open_tab(page, ui, vm, "serial")
    terminal = page.locator("[data-testid=serial-terminal]")
    expect(terminal).to_have_attribute("data-state", "connected")
    screen = terminal.locator("[data-testid=serial-screen]")
    expect(screen).to_contain_text("heron-tick", timeout=BOOT)
    screen.click()
    page.keyboard.type("hello-from-the-browser")
    page.keyboard.press("Enter")
    # The test guest echoes each line that reaches its serial port once it is whole (so an
    # echo never splits a line it prints by itself), between its ticks.
    page.wait_for_function(
        """(word) => document.querySelector("[data-testid=serial-screen]").textContent
             .replace(/heron-(tick \\d+|memcheck[^\\n]*)\\n?/g, "").includes(word)""",
        arg="hello-from-the-browser",
    )


def test_the_console_opens_in_a_window_of_its_own(
    page: Page, ui: str, vm: dict[str, Any], screenshots: Path
) -> None:
    open_tab(page, ui, vm, "console")
    with page.context.expect_page() as opened:
        page.click("[data-testid=console-window]")
    window = opened.value
    expect(window.locator("[data-testid=vnc]")).to_have_attribute("data-rfb-state", "connected")
    expect(window.locator("nav#nav")).to_have_count(0)  # the console alone
    window.select_option("[data-testid=console-kind]", "serial")
    expect(window.locator("[data-testid=serial-terminal]")).to_have_attribute(
        "data-state", "connected"
    )
    shot(window, screenshots, "vm-console-window")
    window.close()


def test_cancel_a_slow_migration_then_migrate(
    page: Page, ui: str, api: Api, vm: dict[str, Any], screenshots: Path
) -> None:
    open_tab(page, ui, vm, "summary")
    page.click("[data-testid=vm-migrate]")
    form = page.locator("[data-testid=migrate-form]")
    target = form.locator("[data-testid=migrate-target]")
    # Every other online node, with what it has free; not the VM's own.
    expect(target.locator("option")).to_have_count(3)
    expect(target.locator("option", has_text="node2")).to_have_count(0)
    target.select_option("node3")
    form.locator("summary").click()
    form.locator("input[name=max_bandwidth_mib]").fill("1")  # 128 MiB at 1 MiB/s: slow
    form.locator("[data-testid=migrate-submit]").click()
    task = page.locator("[data-testid=migrate-task]")
    expect(task).to_have_attribute("data-state", "running")
    page.click("[data-testid=migrate-cancel]")
    page.click("[data-testid=confirm-ok]")
    expect(task).to_have_attribute("data-state", re.compile("cancelled|failed"), timeout=STEP * 2)
    assert api.vm(vm["id"])["node"] == "node2"

    page.click("[data-testid=vm-migrate]")
    form.locator("[data-testid=migrate-target]").select_option("")  # automatic
    form.locator("summary").click()
    bandwidth = form.locator("input[name=max_bandwidth_mib]")
    expect(bandwidth).to_have_value("1")  # the options stay as they were set
    bandwidth.fill("1024")
    form.locator("[data-testid=migrate-submit]").click()
    expect(task).to_have_attribute("data-state", "succeeded", timeout=STEP * 4)
    expect(task.locator("[data-testid=migrate-result]")).to_contain_text("Runs on node")
    moved = api.vm(vm["id"])
    assert moved["node"] != "node2" and moved["state"] == "running"
    # The guest moved as it runs: the vCPUs and the cloud-init seed edited earlier still wait
    # for its next start.
    assert moved["pending"] == ["vcpus", "disks", "cloud_init"]
    shot(page, screenshots, "vm-migrated")


def test_the_vm_page_in_russian(page: Page, ui: str, vm: dict[str, Any]) -> None:
    page.goto(ui)
    page.select_option("[data-testid=language]", "ru")
    try:
        for tab in ("summary", "hardware", "disks", "serial", "console"):
            open_tab(page, ui, vm, tab)
            if tab == "summary":
                page.click("[data-testid=vm-migrate]")
                page.locator("[data-testid=migrate-form] summary").click()
            settle(page)
            assert_translated(page, "ru", f"/vms/{NAME}?tab={tab}")
    finally:
        page.select_option("[data-testid=language]", "en")


def test_the_vm_page_at_phone_width(
    phone: Page, ui: str, admin_password: str, vm: dict[str, Any], screenshots: Path
) -> None:
    log_in(phone, ui, admin_password)
    for tab in ("summary", "hardware", "disks", "serial"):
        open_tab(phone, ui, vm, tab)
        if tab == "summary":
            phone.click("[data-testid=vm-migrate]")
        assert_fits(phone, f"the {tab} tab")
        assert_translated(phone, "ru", f"/vms/{NAME}?tab={tab} (phone)")
        shot(phone, screenshots, f"phone-vm-{tab}")


def test_no_script_failed_on_the_way(page: Page, script_errors: list[str]) -> None:
    assert not script_errors
