"""A VM's snapshots in a real browser against a real devcluster: take two from the form drawn
from the API's schema (a bad name refused beside its input; the second with the guest's
memory, which its row says in both languages), see the tree, revert to the first after
confirming, and delete the second. Then the VM is protected, replicated and unprotected in
the Disaster recovery view."""

from pathlib import Path
from typing import Any

import pytest
from browsing import STEP, assert_translated, log_in, settle, shot
from playwright.sync_api import BrowserContext, Page, expect
from support import Api

pytestmark = pytest.mark.integration

SLOW = 240_000  # ms: a revert restarts a TCG guest's QEMU on a busy host


@pytest.fixture(scope="module")
def page(desktop: BrowserContext, ui: str, admin_password: str) -> Page:
    page = desktop.new_page()
    log_in(page, ui, admin_password)
    return page


@pytest.fixture(scope="module")
def vm(api: Api, image: str) -> dict[str, Any]:
    body = {
        "name": "snapped",
        "memory_mib": 96,
        "node": "node1",
        "start": True,
        "disks": [{"pool": "shared", "source": image}],
    }
    reply = api.ok("POST", "/vms", json=body)
    api.wait_task(reply["task"])
    return api.vm(reply["vm"])


def take(page: Page, name: str, memory: bool = False) -> None:
    page.click("[data-testid=snapshot-new]")
    form = page.locator("[data-testid=snapshot-form]")
    form.locator("input[name=name]").fill(name)
    form.locator("select[name=quiesce]").select_option("off")
    if memory:
        form.locator("input[name=memory]").check()
    page.click("[data-testid=snapshot-submit]")


def test_take_revert_and_delete_snapshots(
    page: Page, ui: str, api: Api, vm: dict[str, Any], screenshots: Path
) -> None:
    page.goto(f"{ui}/vms/{vm['id']}?tab=snapshots")
    settle(page)
    expect(page.locator("[data-testid=snapshots-empty]")).to_be_visible()

    take(page, "Not A Name")
    expect(page.locator("[data-testid=field-error]")).to_be_visible(timeout=STEP)
    page.locator("[data-testid=snapshot-form] input[name=name]").fill("first")
    page.click("[data-testid=snapshot-submit]")
    first = page.locator("tr[data-snapshot=first]")
    expect(first).to_contain_text("ready", timeout=SLOW)
    expect(page.locator("[data-testid=snapshot-task]")).to_have_attribute(
        "data-state", "succeeded", timeout=STEP
    )
    take(page, "second", memory=True)
    second = page.locator("tr[data-snapshot=second]")
    expect(second).to_contain_text("ready", timeout=SLOW)
    expect(second).to_have_attribute("data-current", "true", timeout=STEP)
    # The memory snapshot says so, with its memory's size; the disk-only one does not.
    holds = "[data-testid=snapshot-holds]"
    expect(second.locator(holds)).to_have_text("disks and memory")
    expect(second.locator("[data-testid=snapshot-size]")).to_contain_text("memory ")
    expect(first.locator(holds)).to_have_text("disks")
    expect(first.locator("[data-testid=snapshot-size]")).not_to_contain_text("memory")
    shot(page, screenshots, "vm-snapshots")
    page.locator("[data-testid=language]").select_option("ru")
    try:
        expect(second.locator(holds)).to_have_text("диски и память")
        expect(second.locator("[data-testid=snapshot-size]")).to_contain_text("память ")
        expect(first.locator(holds)).to_have_text("диски")
        assert_translated(page, "ru", "the snapshot table")
    finally:
        page.locator("[data-testid=language]").select_option("en")

    first.locator("[data-testid=snapshot-revert]").click()
    expect(page.locator("[data-testid=confirm]")).to_be_visible()
    page.click("[data-testid=confirm-ok]")
    expect(first).to_have_attribute("data-current", "true", timeout=SLOW)
    expect(page.locator("[data-testid=snapshot-task]")).to_have_attribute(
        "data-state", "succeeded", timeout=SLOW
    )
    assert api.vm(vm["id"])["state"] == "running"  # it ran, so it runs again

    second.locator("[data-testid=snapshot-delete]").click()
    page.click("[data-testid=confirm-ok]")
    expect(second).to_have_count(0, timeout=SLOW)
    expect(first).to_be_visible()


def test_protect_a_vm_see_its_point_and_unprotect_it(
    page: Page, ui: str, api: Api, vm: dict[str, Any], screenshots: Path
) -> None:
    # The Disaster recovery view (it shares this module's running VM): protect it from the
    # policy form, its node's first round shows a point and the RPO; unprotect after a confirm.
    page.goto(f"{ui}/dr")
    settle(page)
    row = page.locator(f"tr[data-vm={vm['name']}]")
    expect(row.locator("[data-testid=dr-state]")).to_have_attribute("data-protected", "false")
    row.locator("[data-testid=dr-protect]").click()
    form = page.locator("[data-testid=dr-policy-form]")
    form.locator("[data-testid=dr-interval]").fill("1")  # under the cluster's least: refused
    form.locator("[data-testid=dr-save]").click()
    expect(form).to_contain_text("interval_seconds", timeout=STEP)
    form.locator("[data-testid=dr-interval]").fill("3600")
    form.locator("[data-testid=dr-retention]").fill("2")
    form.locator("[data-testid=dr-save]").click()
    expect(row.locator("[data-testid=dr-state]")).to_have_attribute(
        "data-protected", "true", timeout=STEP
    )
    expect(row.locator("[data-testid=dr-rpo]")).to_contain_text(" s", timeout=SLOW)
    expect(page.locator("[data-testid=dr-points] tbody tr[data-point]")).to_have_count(1)
    expect(page.locator("[data-testid=dr-points]")).to_contain_text("Full")
    shot(page, screenshots, "dr")
    page.locator("[data-testid=language]").select_option("ru")
    try:
        expect(row.locator("[data-testid=dr-state]")).to_have_text("Защищена")
        assert_translated(page, "ru", "the disaster recovery view")
    finally:
        page.locator("[data-testid=language]").select_option("en")
    row.locator("[data-testid=dr-unprotect]").click()
    page.click("[data-testid=confirm-ok]")
    expect(row.locator("[data-testid=dr-state]")).to_have_attribute(
        "data-protected", "false", timeout=STEP
    )
    expect(row.locator("[data-testid=dr-rpo]")).to_have_text("—")
