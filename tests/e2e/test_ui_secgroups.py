"""The web UI for security groups and NIC rate limits (issue 14), in a real browser against a
real 3-node devcluster.

The tests run in order on one page: a group made with its form, rules added with the rule
form (a bad CIDR and a backwards port range refused next to their inputs, ports offered only
for tcp and udp, a remote group chosen from the groups) and one removed; a VM's NIC given the
group and a rate on its page (a rate of 0 refused next to its input) and shown in its table;
a new VM's NIC given them in the wizard; the group's deletion refused while a NIC uses it;
both languages; phone width.
"""

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import test_ui
from browsing import assert_translated, log_in, settle, shot
from playwright.sync_api import Page, Request, expect
from support import Api
from test_ui_groups_storage import confirm, in_russian
from test_ui_network import fits_375
from test_ui_tree import expand, item

pytestmark = pytest.mark.integration

# One browser page for the module, as test_ui has it: logged in by the first test.
page = test_ui.page


@pytest.fixture(scope="module")
def vm(api: Api) -> str:
    """A stopped VM with one NIC on a switch's network, for the NIC forms."""
    api.ok("POST", "/switches", json={"name": "sg-sw"})
    api.ok("POST", "/networks", json={"name": "sg-net", "switch": "sg-sw"})
    reply = api.ok(
        "POST",
        "/vms",
        json={
            "name": "sgvm",
            "memory_mib": 96,
            "start": False,
            "disks": [],
            "nics": [{"network": "sg-net"}],
        },
    )
    if reply.get("task"):
        api.wait_task(reply["task"])
    return str(reply["vm"])


def sent_to(method: str, path: str) -> Callable[[Request], bool]:
    return lambda r: r.method == method and r.url.endswith(f"/api/v1{path}")


def test_log_in(page: Page, ui: str, admin_password: str) -> None:
    log_in(page, ui, admin_password)


def test_create_a_group(page: Page) -> None:
    page.click("[data-testid=nav-security-groups]")
    expect(page).to_have_url(re.compile(r"/security-groups$"))
    expect(page.locator("[data-testid=sg-empty]")).to_contain_text("No security groups yet")
    form = page.locator("[data-testid=sg-form]")
    form.locator("input[name=name]").fill("web")
    form.locator("input[name=description]").fill("front ends")
    with page.expect_request(sent_to("POST", "/security-groups")) as sent:
        form.locator("[data-testid=sg-submit]").click()
    assert sent.value.post_data_json == {"name": "web", "description": "front ends"}
    card = page.locator("[data-sg=web]")
    expect(card.locator("[data-testid=sg-description]")).to_have_text("front ends")
    expect(card.locator("[data-testid=rule-table]")).to_contain_text("No rules")
    expect(form.locator("input[name=name]")).to_have_value("")  # the form starts over


def test_add_rules_refused_next_to_their_inputs(page: Page, api: Api, screenshots: Path) -> None:
    card = page.locator("[data-sg=web]")
    card.locator("[data-testid=sg-rule-add]").click()
    form = card.locator("[data-testid=rule-form]")
    # Ports are for tcp and udp only.
    expect(form.locator("select[name=protocol]")).to_have_value("any")
    expect(form.locator("input[name=ports]")).to_have_count(0)
    form.locator("select[name=protocol]").select_option("tcp")
    form.locator("input[name=ports]").fill("22")
    form.locator("input[name=remote]").fill("10.0.0.0/33")
    form.locator("[data-testid=rule-submit]").click()
    expect(form.locator("[data-field=remote] [data-testid=field-error]")).to_contain_text(
        "is not an IPv4 network"
    )
    expect(form.locator("[data-testid=error]")).to_contain_text("422")
    shot(page, screenshots, "secgroups-bad-cidr")

    form.locator("input[name=remote]").fill("10.0.0.0/8")
    form.locator("input[name=ports]").fill("2000-1000")
    form.locator("[data-testid=rule-submit]").click()
    expect(form.locator("[data-field=ports] [data-testid=field-error]")).to_contain_text(
        "low to high"
    )
    expect(form.locator("[data-field=remote] [data-testid=field-error]")).to_have_count(0)

    form.locator("input[name=ports]").fill("1000-2000")
    with page.expect_request(sent_to("POST", "/security-groups/web/rules")) as sent:
        form.locator("[data-testid=rule-submit]").click()
    assert sent.value.post_data_json == {
        "direction": "in",
        "protocol": "tcp",
        "ports": "1000-2000",
        "remote": "10.0.0.0/8",
        "description": "",
    }
    first = card.locator("tr[data-rule='0']")
    expect(first.locator("[data-testid=rule-direction]")).to_have_attribute("data-direction", "in")
    expect(first.locator("[data-testid=rule-protocol]")).to_have_text("TCP")
    expect(first.locator("[data-testid=rule-ports]")).to_have_text("1000-2000")
    expect(first.locator("[data-testid=rule-remote]")).to_have_text("10.0.0.0/8")
    expect(form.locator("[data-testid=field-error]")).to_have_count(0)

    # ICMP from the group's own members: no ports; a group chosen, no network asked.
    form.locator("select[name=protocol]").select_option("icmp")
    expect(form.locator("input[name=ports]")).to_have_count(0)
    form.locator("select[name=remote_group]").select_option("web")
    expect(form.locator("input[name=remote]")).to_have_count(0)
    with page.expect_request(sent_to("POST", "/security-groups/web/rules")) as sent:
        form.locator("[data-testid=rule-submit]").click()
    body = sent.value.post_data_json
    assert body["remote_group"] == "web" and "ports" not in body and "remote" not in body, body
    second = card.locator("tr[data-rule='1']")
    expect(second.locator("[data-testid=rule-protocol]")).to_have_text("ICMP")
    expect(second.locator("[data-testid=rule-ports]")).to_have_text("all")
    expect(second.locator("[data-testid=rule-remote]")).to_have_text("group web")
    assert len(api.ok("GET", "/security-groups/web")["rules"]) == 2
    in_russian(page, "/security-groups with the rule form")
    shot(page, screenshots, "secgroups")


def test_edit_the_group_and_remove_a_rule(page: Page, api: Api) -> None:
    card = page.locator("[data-sg=web]")
    card.locator("[data-testid=sg-edit]").click()
    form = card.locator("[data-testid=sg-edit-form]")
    expect(form.locator("input[name=description]")).to_have_value("front ends")
    form.locator("input[name=description]").fill("web servers")
    form.locator("[data-testid=sg-save]").click()
    expect(form).to_have_count(0)
    expect(card.locator("[data-testid=sg-description]")).to_have_text("web servers")

    card.locator("tr[data-rule='0'] [data-testid=rule-remove]").click()
    confirm(page, "web", "1000-2000")
    expect(card.locator("tr[data-rule]")).to_have_count(1)
    expect(card.locator("tr[data-rule='0'] [data-testid=rule-protocol]")).to_have_text("ICMP")
    assert [r["protocol"] for r in api.ok("GET", "/security-groups/web")["rules"]] == ["icmp"]


def test_the_tree_lists_the_groups_with_their_rules(page: Page, api: Api) -> None:
    tree = page.locator("[role=tree]")
    expand(item(tree, "secgroups", "tree.securityGroups"))
    web = item(tree, "secgroup", "web", "secgroups")
    rules = len(api.ok("GET", "/security-groups/web")["rules"])
    expect(web).to_contain_text(f"rules: {rules}")
    expect(web).to_have_attribute("data-to", "/security-groups")


def test_give_a_nic_the_group_and_a_rate(page: Page, ui: str, api: Api, vm: str) -> None:
    page.goto(f"{ui}/vms/{vm}?tab=nics")
    table = page.locator("[data-testid=nic-table]")
    net0 = table.locator("tr[data-nic='0']")
    expect(net0.locator("[data-testid=nic-groups]")).to_have_text("not filtered")
    expect(net0.locator("[data-testid=nic-rates]")).to_have_text("unlimited")
    net0.locator("[data-testid=nic-edit]").click()
    form = net0.locator("[data-testid=nic-edit-form]")
    form.locator("[data-testid=nic-sg][value=web]").check()
    form.locator("[data-testid=nic-ingress]").fill("200")
    form.locator("[data-testid=nic-egress]").fill("0")
    form.locator("[data-testid=nic-save]").click()
    egress = form.locator("label:has([data-testid=nic-egress]) [data-testid=field-error]")
    expect(egress).to_contain_text("greater than or equal to 1")

    form.locator("[data-testid=nic-egress]").fill("")
    with page.expect_request(sent_to("PATCH", f"/vms/{vm}/nics/0")) as sent:
        form.locator("[data-testid=nic-save]").click()
    assert sent.value.post_data_json == {"security_groups": ["web"], "ingress_mbps": 200}
    expect(form).to_have_count(0)
    expect(net0.locator("[data-testid=nic-groups]")).to_have_text("web")
    expect(net0.locator("[data-testid=nic-rate-in]")).to_have_text("in ≤ 200 Mbit/s")
    expect(net0.locator("[data-testid=nic-rate-out]")).to_have_count(0)
    nic = api.vm(vm)["spec"]["nics"][0]
    assert (nic["security_groups"], nic["ingress_mbps"], nic["egress_mbps"]) == (["web"], 200, None)
    in_russian(page, "the VM's NICs with groups and rates")


def test_a_new_nic_and_a_new_vm_get_them_too(page: Page, ui: str, api: Api, vm: str) -> None:
    attach = page.locator("[data-testid=nic-attach-form]")
    expect(attach.locator("[data-testid=nic-policy]")).to_have_count(0)  # NAT is not filtered
    attach.locator("[data-testid=nic-attach-network]").select_option("sg-net")
    attach.locator("[data-testid=nic-sg][value=web]").check()
    attach.locator("[data-testid=nic-egress]").fill("50")
    with page.expect_request(sent_to("POST", f"/vms/{vm}/nics")) as sent:
        attach.locator("[data-testid=nic-attach]").click()
    body = sent.value.post_data_json
    assert body["security_groups"] == ["web"] and body["egress_mbps"] == 50, body
    net1 = page.locator("[data-testid=nic-table] tr[data-nic='1']")
    expect(net1.locator("[data-testid=nic-rate-out]")).to_have_text("out ≤ 50 Mbit/s")
    # The rate lifted again: an emptied input is null, which the API takes as "no limit".
    net1.locator("[data-testid=nic-edit]").click()
    form = net1.locator("[data-testid=nic-edit-form]")
    expect(form.locator("[data-testid=nic-egress]")).to_have_value("50")
    form.locator("[data-testid=nic-egress]").fill("")
    with page.expect_request(sent_to("PATCH", f"/vms/{vm}/nics/1")) as sent:
        form.locator("[data-testid=nic-save]").click()
    assert sent.value.post_data_json == {"egress_mbps": None}
    expect(net1.locator("[data-testid=nic-rates]")).to_have_text("unlimited")

    page.goto(f"{ui}/vms/new")
    page.fill("[data-testid=create-name]", "sgvm2")
    page.click("[data-testid=create-next]")
    page.locator("input[type=radio][value=none]").check()
    page.click("[data-testid=create-next]")
    nic = page.locator("[data-testid=nics] [data-nic='0']")
    expect(nic.locator("[data-testid=nic-policy]")).to_have_count(0)
    nic.locator("[data-testid=nic-network]").select_option("sg-net")
    nic.locator("[data-testid=nic-sg][value=web]").check()
    nic.locator("[data-testid=nic-ingress]").fill("300")
    in_russian(page, "the wizard's network step with groups and rates")
    page.click("[data-testid=create-next]")
    expect(page.locator("[data-testid=review-nics]")).to_contain_text("net0: sg-net")
    expect(page.locator("[data-testid=review-nics]")).to_contain_text("web")
    page.locator("[data-testid=create-start]").uncheck()
    with page.expect_request(sent_to("POST", "/vms")) as sent:
        page.click("[data-testid=create-submit]")
    assert sent.value.post_data_json["nics"] == [
        {"network": "sg-net", "model": "virtio", "security_groups": ["web"], "ingress_mbps": 300}
    ]
    expect(page).to_have_url(re.compile(r"/vms/[0-9a-f-]{36}$"))
    made = page.url.rsplit("/", 1)[1]
    spec = api.vm(made)["spec"]["nics"][0]
    assert (spec["security_groups"], spec["ingress_mbps"]) == (["web"], 300)
    api.wait_task(api.ok("DELETE", f"/vms/{made}")["task"])


def test_a_group_in_use_is_not_deleted(page: Page, ui: str) -> None:
    page.goto(f"{ui}/security-groups")
    page.locator("[data-sg=web] [data-testid=sg-delete]").click()
    confirm(page, "web")
    error = page.locator("[data-testid=error]")
    expect(error).to_contain_text("409")
    expect(error).to_contain_text("is used by NICs of VMs: sgvm")
    expect(page.locator("[data-sg=web]")).to_have_count(1)


def test_at_phone_width_in_russian(
    phone: Page, ui: str, admin_password: str, vm: str, screenshots: Path
) -> None:
    log_in(phone, ui, admin_password)
    phone.goto(f"{ui}/security-groups")
    phone.locator("[data-sg=web] [data-testid=sg-rule-add]").click()
    phone.locator("[data-testid=rule-form] select[name=protocol]").select_option("tcp")
    settle(phone)
    fits_375(phone, "/security-groups with the rule form")
    assert_translated(phone, "ru", "/security-groups at 375 px")
    shot(phone, screenshots, "phone-secgroups")
    phone.goto(f"{ui}/vms/{vm}?tab=nics")
    phone.locator("tr[data-nic='0'] [data-testid=nic-edit]").click()
    expect(phone.locator("[data-testid=nic-edit-form] [data-testid=nic-policy]")).to_be_visible()
    phone.locator("[data-testid=nic-attach-network]").select_option("sg-net")
    fits_375(phone, "the VM's NIC forms")
    assert_translated(phone, "ru", "the VM's NIC forms at 375 px")
    shot(phone, screenshots, "phone-nic-policy")


def test_delete_the_group_once_no_nic_names_it(page: Page, api: Api, vm: str) -> None:
    api.wait_task(api.ok("DELETE", f"/vms/{vm}")["task"])
    page.reload()
    page.locator("[data-sg=web] [data-testid=sg-delete]").click()
    confirm(page, "web")
    expect(page.locator("[data-sg=web]")).to_have_count(0)
    expect(page.locator("[data-testid=sg-empty]")).to_contain_text("No security groups yet")
