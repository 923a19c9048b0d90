"""Hotplug and QoS in a real browser: a running VM gets a vCPU from its hardware form (the
task's progress and result shown live), and a disk's I/O limits from its disk table; the
same in Russian."""

from pathlib import Path
from typing import Any

import pytest
from browsing import STEP, assert_translated, log_in, open_tab, settle, shot
from playwright.sync_api import BrowserContext, Page, expect
from support import Api

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def page(desktop: BrowserContext, ui: str, admin_password: str) -> Page:
    page = desktop.new_page()
    log_in(page, ui, admin_password)
    return page


@pytest.fixture(scope="module")
def vm(api: Api, image: str) -> dict[str, Any]:
    body = {
        "name": "growing",
        "vcpus": 1,
        "max_vcpus": 2,
        "memory_mib": 128,
        "node": "node2",
        "start": True,
        "disks": [{"pool": "shared", "source": image}],
    }
    reply = api.ok("POST", "/vms", json=body)
    api.wait_task(reply["task"])
    return api.vm(reply["vm"])


def test_a_vcpu_plugged_in_from_the_hardware_form(
    page: Page, ui: str, api: Api, vm: dict[str, Any], screenshots: Path
) -> None:
    open_tab(page, ui, vm, "hardware")
    form = page.locator("[data-testid=hardware-form]")
    expect(form.locator("input[name=max_vcpus]")).to_have_value("2")
    form.locator("input[name=vcpus]").fill("2")
    form.locator("[data-testid=hardware-save]").click()
    task = form.locator("[data-testid=hardware-task]")
    expect(task).to_have_attribute("data-state", "succeeded", timeout=STEP)
    expect(task.locator("[data-testid=hardware-task-result]")).to_contain_text("2 vCPUs")
    shot(page, screenshots, "hotplug-vcpu")
    shown = api.vm(vm["id"])
    assert shown["status"]["hardware"]["vcpus"] == 2 and shown["pending"] == []


def test_disk_limits_from_the_disk_table(
    page: Page, ui: str, api: Api, vm: dict[str, Any], screenshots: Path
) -> None:
    open_tab(page, ui, vm, "disks")
    row = page.locator("[data-testid=disk-table] [data-disk='0']")
    expect(row.locator("[data-testid=disk-limits]")).to_have_text("—")
    row.locator("[data-testid=disk-limit]").click()
    limits = row.locator("[data-testid=disk-limits-form]")
    limits.locator("input[name=iops]").fill("200")
    limits.locator("input[name=iops_burst]").fill("100")  # below the limit: refused
    limits.locator("[data-testid=disk-limits-save]").click()
    expect(page.locator("[data-testid=error]")).to_contain_text("iops_burst")
    assert api.vm(vm["id"])["spec"]["disks"][0]["qos"]["iops"] is None
    limits.locator("input[name=iops_burst]").fill("400")
    limits.locator("[data-testid=disk-limits-save]").click()
    expect(row.locator("[data-testid=disk-limits]")).to_have_text("200 IOPS (400)")
    expect(page.locator("[data-testid=hardware-task]")).to_have_attribute(
        "data-state", "succeeded", timeout=STEP
    )
    disk = api.vm(vm["id"])["status"]["hardware"]["disks"][0]
    assert (disk["qos"]["iops"], disk["qos"]["iops_burst"]) == (200, 400)
    shot(page, screenshots, "hotplug-disk-limits")


def test_in_russian(page: Page, ui: str, vm: dict[str, Any]) -> None:
    open_tab(page, ui, vm, "disks")
    page.locator("[data-testid=language]").select_option("ru")
    settle(page)
    expect(page.locator("[data-testid=disk-table]")).to_contain_text("Ограничения")
    assert_translated(page, "ru", "the disk table")
    page.locator("[data-testid=language]").select_option("en")
