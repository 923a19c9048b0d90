"""Templates and clones in a real browser against a real devcluster: make a stopped VM a
template (its start button goes), clone it linked from the form drawn from the API's schema (a
bad name refused beside its input), follow the clone task to its end and open the clone."""

from pathlib import Path
from typing import Any

import pytest
from browsing import STEP, log_in, settle, shot
from playwright.sync_api import BrowserContext, Page, expect
from support import Api

pytestmark = pytest.mark.integration

SLOW = 120_000  # ms


@pytest.fixture(scope="module")
def page(desktop: BrowserContext, ui: str, admin_password: str) -> Page:
    page = desktop.new_page()
    log_in(page, ui, admin_password)
    return page


@pytest.fixture(scope="module")
def vm(api: Api, image: str) -> dict[str, Any]:
    body = {"name": "golden", "memory_mib": 96, "disks": [{"pool": "shared", "source": image}]}
    reply = api.ok("POST", "/vms", json=body)
    api.wait_task(reply["task"])
    return api.vm(reply["vm"])


def test_template_and_linked_clone(
    page: Page, ui: str, api: Api, vm: dict[str, Any], screenshots: Path
) -> None:
    page.goto(f"{ui}/vms/{vm['id']}")
    settle(page)
    expect(page.locator("[data-testid=vm-start]")).to_be_visible()
    page.click("[data-testid=vm-make-template]")
    expect(page.locator("[data-testid=vm-template]")).to_be_visible(timeout=STEP)
    expect(page.locator("[data-testid=vm-start]")).to_have_count(0)
    assert api.vm(vm["id"])["template"] is True

    page.click("[data-testid=vm-clone]")
    form = page.locator("[data-testid=clone-form]")
    form.locator("input[name=name]").fill("Not A Name")
    page.click("[data-testid=clone-submit]")
    expect(page.locator("[data-testid=field-error]")).to_be_visible(timeout=STEP)
    form.locator("input[name=name]").fill("golden-1")
    form.locator("input[name=linked]").check()
    shot(page, screenshots, "vm-clone-form")
    page.click("[data-testid=clone-submit]")
    expect(page.locator("[data-testid=clone-task]")).to_have_attribute(
        "data-state", "succeeded", timeout=SLOW
    )
    clone = api.vm("golden-1")
    disk = clone["spec"]["disks"][0]["volume"]
    made = next(v for v in api.ok("GET", "/pools/shared/volumes") if v["id"] == disk)
    assert made["origin"]["linked"] is True
    page.click("[data-testid=clone-open]")
    expect(page).to_have_url(f"{ui}/vms/{clone['id']}", timeout=STEP)
    expect(page.locator("[data-testid=vm-start]")).to_be_visible(timeout=STEP)


def test_mass_deployment_from_the_template(page: Page, ui: str, api: Api) -> None:
    page.goto(f"{ui}/vms/batch")
    form = page.locator("[data-testid=batch-form]")
    form.locator("[data-testid=batch-prefix]").fill("gold")
    form.locator("[data-testid=batch-count]").fill("2")
    form.locator("[data-testid=batch-template]").select_option("golden")
    expect(form.locator("input[type=radio][value=none]")).to_have_count(0)  # its disks
    form.locator("[data-testid=batch-plan]").click()
    plan = page.locator("[data-testid=batch-plan-table]")
    expect(plan.locator("tbody tr")).to_have_count(2, timeout=STEP)
    with page.expect_request(lambda r: r.url.endswith("/vms/batch")) as sent:
        plan.locator("[data-testid=batch-submit]").click()
    body = sent.value.post_data_json
    assert (body["template"], body["linked"], body["count"]) == ("golden", True, 2)
    made = page.locator("[data-testid=batch-made]")
    expect(made.locator("tbody tr")).to_have_count(2, timeout=STEP)
    for task in made.locator("[data-testid=made-task]").all():
        expect(task).to_have_attribute("data-state", "succeeded", timeout=SLOW)
    for name in ("gold-001", "gold-002"):
        disk = api.vm(name)["spec"]["disks"][0]["volume"]
        made_volume = next(v for v in api.ok("GET", "/pools/shared/volumes") if v["id"] == disk)
        assert made_volume["origin"]["linked"] is True
