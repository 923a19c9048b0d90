"""The web UI for networking (issue 14), in a real browser against a real 3-node devcluster.

The tests run in order on one page: a switch with an uplink and a VLAN network with a subnet
made through their schema-drawn forms (a bad CIDR refused next to its input), a VXLAN segment
that takes its switch's MTU less the overlay's headers, a VM made in the wizard with NICs on
both networks whose MAC and address the cluster gave, the network's deletion refused while the
VM uses it and allowed after; each view in both languages and at phone width.
"""

import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import test_ui
from browsing import assert_fits, assert_translated, log_in, settle, shot
from playwright.sync_api import Page, Request, expect
from support import Api
from test_ui_groups_storage import confirm, in_russian
from test_ui_tree import expand, item

from heron.devcluster import DevCluster
from heron.network.plan import switch_bridge

pytestmark = pytest.mark.integration

# One browser page for the module, as test_ui has it: logged in by the first test.
page = test_ui.page

MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


@pytest.fixture(scope="module")
def made() -> dict[str, Any]:
    """What the tests learn along the way (the VM's id), for the ones after."""
    return {}


def posted(path: str) -> Callable[[Request], bool]:
    return lambda r: r.method == "POST" and r.url.endswith(f"/api/v1{path}")


def test_log_in(page: Page, ui: str, admin_password: str) -> None:
    log_in(page, ui, admin_password)


def test_create_a_switch_with_an_uplink(page: Page, ui: str, screenshots: Path) -> None:
    page.click("[data-testid=nav-networks]")
    expect(page).to_have_url(re.compile(r"/networks$"))
    expect(page.locator("[data-testid=switch-table]")).to_contain_text("No switches yet")
    form = page.locator("[data-testid=switch-form]")
    # The form follows the schema of POST /switches: its fields, with their defaults.
    expect(form.locator("select[name=backend]")).to_have_value("bridge")
    expect(form.locator("input[name=mtu]")).to_have_value("1500")

    form.locator("input[name=name]").fill("lan")
    form.locator("[data-testid=uplink-add]").click()
    uplink = form.locator("[data-testid=uplink-row]")
    expect(uplink.locator("select option")).to_have_count(3)  # the cluster's nodes
    uplink.locator("select").select_option("node2")
    uplink.locator("input").fill("eth1")
    with page.expect_request(posted("/switches")) as sent:
        form.locator("[data-testid=switch-submit]").click()
    assert sent.value.post_data_json == {
        "name": "lan",
        "backend": "bridge",
        "mtu": 1500,
        "description": "",
        "uplinks": {"node2": "eth1"},
    }
    row = page.locator("tr[data-switch=lan]")
    expect(row.locator("[data-testid=switch-mtu]")).to_have_text("1500")
    expect(row.locator("[data-testid=switch-uplinks]")).to_contain_text("node2: eth1")
    # Every node is listed with its report, or "no report yet" before its controller writes one.
    status = row.locator("[data-testid=switch-status] li[data-node]")
    expect(status).to_have_count(3)
    for node in ("node1", "node2", "node3"):
        expect(row.locator(f"li[data-node={node}]")).to_have_attribute(
            "data-sync", re.compile(r"^(in-sync|problems|no-report)$")
        )
    expect(form.locator("[data-testid=uplink-row]")).to_have_count(0)  # the form starts over
    shot(page, screenshots, "networks-switch")


def test_edit_the_switch_uplinks(page: Page, api: Api) -> None:
    page.locator("tr[data-switch=lan] [data-testid=switch-edit]").click()
    form = page.locator("[data-testid=switch-edit-form]")
    expect(form.locator("[data-testid=uplink-row]")).to_have_count(1)
    form.locator("[data-testid=uplink-add]").click()
    second = form.locator("[data-testid=uplink-row]").nth(1)
    expect(second.locator("select")).to_have_value(re.compile(r"^node[13]$"))  # a free node
    second.locator("select").select_option("node3")
    second.locator("input").fill("bad name")
    form.locator("[data-testid=switch-save]").click()
    expect(second.locator("[data-testid=field-error]")).to_contain_text("is not an interface name")
    second.locator("input").fill("bond0")
    form.locator("[data-testid=switch-save]").click()
    expect(form).to_have_count(0)
    expect(page.locator("tr[data-switch=lan] [data-testid=switch-uplinks]")).to_contain_text(
        "node3: bond0"
    )
    assert api.ok("GET", "/switches/lan")["uplinks"] == {"node2": "eth1", "node3": "bond0"}


def test_drift_put_back_is_shown_per_node(page: Page, cluster3: tuple[DevCluster, str]) -> None:
    """The switch's bridge deleted by hand on node1: the node builds it again and says so."""
    cluster, _ = cluster3
    node1 = page.locator("tr[data-switch=lan] li[data-node=node1]")
    expect(node1).to_have_attribute("data-sync", "in-sync", timeout=60_000)
    place = next(p for p in cluster.fabric_nodes() if p.name == "node1")
    bridge = switch_bridge("lan")
    subprocess.run(["ip", "-n", place.netns, "link", "del", bridge], check=True)
    expect(node1.locator("[data-testid=switch-repaired]")).to_contain_text(
        f"{bridge} was missing: made again", timeout=90_000
    )


def test_create_a_vlan_network_with_a_subnet(page: Page, screenshots: Path) -> None:
    form = page.locator("[data-testid=network-form]")
    expect(form.locator("select[name=switch]")).to_have_value("lan")
    form.locator("input[name=name]").fill("vlan100")
    # Only the fields of the kind chosen are shown.
    expect(form.locator("input[name=vlan]")).to_have_count(0)
    form.locator("select[name=kind]").select_option("vlan")
    expect(form.locator("input[name=vlan]")).to_be_visible()
    expect(form.locator("input[name=vni]")).to_have_count(0)
    expect(form.locator("input[name=trunk]")).to_have_count(0)
    form.locator("input[name=vlan]").fill("100")
    form.locator("input[name=subnet]").check()
    form.locator("input[name='subnet.cidr']").fill("10.100.0.0/33")
    form.locator("[data-testid=network-submit]").click()
    reason = form.locator("[data-field='subnet.cidr'] [data-testid=field-error]")
    expect(reason).to_contain_text("is not an IPv4 network")
    expect(form.locator("[data-testid=error]")).to_contain_text("422")
    shot(page, screenshots, "networks-bad-cidr")

    form.locator("input[name='subnet.cidr']").fill("10.100.0.0/24")
    form.locator("input[name='subnet.gateway']").fill("10.100.0.1")
    form.locator("[data-field='subnet.ranges'] [data-testid=item-add]").click()
    form.locator("input[name='subnet.ranges.first']").fill("10.100.0.10")
    form.locator("input[name='subnet.ranges.last']").fill("10.100.0.20")
    with page.expect_request(posted("/networks")) as sent:
        form.locator("[data-testid=network-submit]").click()
    body = sent.value.post_data_json
    assert body["kind"] == "vlan" and body["vlan"] == 100 and body["switch"] == "lan", body
    assert "vni" not in body and "trunk" not in body, body
    assert body["subnet"]["ranges"] == [{"first": "10.100.0.10", "last": "10.100.0.20"}], body
    row = page.locator("tr[data-network=vlan100]")
    expect(row.locator("[data-testid=network-kind]")).to_have_attribute("data-kind", "vlan")
    expect(row.locator("[data-testid=network-tag]")).to_have_text("VLAN 100")
    expect(row.locator("[data-testid=network-mtu]")).to_contain_text("1500")
    expect(row.locator("[data-testid=network-subnet]")).to_contain_text("10.100.0.0/24")
    expect(row.locator("[data-testid=network-subnet]")).to_contain_text("10.100.0.1")
    expect(form.locator("[data-testid=error]")).to_have_count(0)


def test_a_vxlan_segment_takes_the_switch_mtu_less_its_headers(
    page: Page, screenshots: Path
) -> None:
    form = page.locator("[data-testid=network-form]")
    form.locator("input[name=name]").fill("overlay")
    form.locator("select[name=kind]").select_option("vxlan")
    expect(form.locator("input[name=vlan]")).to_have_count(0)
    form.locator("input[name=vni]").fill("5001")
    with page.expect_request(posted("/networks")) as sent:
        form.locator("[data-testid=network-submit]").click()
    assert sent.value.post_data_json["mtu"] is None
    row = page.locator("tr[data-network=overlay]")
    expect(row.locator("[data-testid=network-tag]")).to_have_text("VNI 5001")
    expect(row.locator("[data-testid=network-mtu]")).to_contain_text("1450")
    expect(row.locator("[data-testid=network-mtu]")).to_contain_text("from the switch")
    expect(row.locator("[data-testid=network-subnet]")).to_contain_text("none")
    shot(page, screenshots, "networks")


def test_the_tree_has_the_switch_and_its_networks(page: Page) -> None:
    tree = page.locator("[role=tree]")
    expand(item(tree, "networks", "tree.networks"))
    switch = item(tree, "switch", "lan", "networks")
    expect(switch).to_contain_text("Linux bridge")
    expand(switch)
    overlay = item(tree, "network", "overlay", "networks/switch:lan")
    expect(overlay).to_contain_text("VXLAN overlay")
    expect(overlay).to_have_attribute("data-to", "/networks")
    expect(item(tree, "network", "vlan100", "networks/switch:lan")).to_be_visible()


def test_edit_a_network_in_russian_and_english(page: Page) -> None:
    page.locator("tr[data-network=vlan100] [data-testid=network-edit]").click()
    form = page.locator("[data-testid=network-edit-form]")
    expect(form.locator("input[name=subnet]")).to_be_checked()
    expect(form.locator("input[name='subnet.cidr']")).to_have_value("10.100.0.0/24")
    expect(form.locator("input[name='subnet.ranges.first']")).to_have_value("10.100.0.10")
    in_russian(page, "/networks")
    form.locator("input[name=mtu]").fill("1400")
    with page.expect_request(
        lambda r: r.method == "PATCH" and r.url.endswith("/api/v1/networks/vlan100")
    ) as sent:
        form.locator("[data-testid=network-save]").click()
    assert sent.value.post_data_json["mtu"] == 1400
    assert sent.value.post_data_json["subnet"]["cidr"] == "10.100.0.0/24"
    expect(form).to_have_count(0)
    mtu = page.locator("tr[data-network=vlan100] [data-testid=network-mtu]")
    expect(mtu).to_have_text("1400")


def test_create_a_vm_with_nics_in_the_wizard(
    page: Page, ui: str, screenshots: Path, made: dict[str, Any]
) -> None:
    page.goto(f"{ui}/vms/new")
    page.fill("[data-testid=create-name]", "netvm")
    page.click("[data-testid=create-next]")
    page.locator("input[type=radio][value=none]").check()
    page.click("[data-testid=create-next]")
    nics = page.locator("[data-testid=nics]")
    first = nics.locator("[data-nic='0']")
    expect(first.locator("[data-testid=nic-network]")).to_have_value("user")
    expect(first.locator("[data-testid=nic-address]")).to_have_count(0)  # NAT: no subnet
    first.locator("[data-testid=nic-network]").select_option("vlan100")
    first.locator("[data-testid=nic-address]").fill("10.100.0.15")
    nics.locator("[data-testid=nic-add]").click()
    second = nics.locator("[data-nic='1']")
    second.locator("[data-testid=nic-network]").select_option("overlay")
    expect(second.locator("[data-testid=nic-address]")).to_have_count(0)  # no subnet to take from
    nics.locator("[data-testid=nic-add]").click()
    nics.locator("[data-nic='2'] [data-testid=nic-remove]").click()
    expect(nics.locator("[data-nic]")).to_have_count(2)
    in_russian(page, "the wizard's network step")
    shot(page, screenshots, "create-nics")
    page.click("[data-testid=create-next]")
    review = page.locator("[data-testid=review-nics]")
    expect(review).to_contain_text("net0: vlan100")
    expect(review).to_contain_text("net1: overlay")
    page.locator("[data-testid=create-start]").uncheck()

    with page.expect_request(posted("/vms")) as sent:
        page.click("[data-testid=create-submit]")
    assert sent.value.post_data_json["nics"] == [
        {"network": "vlan100", "model": "virtio", "address": "10.100.0.15"},
        {"network": "overlay", "model": "virtio"},
    ]
    expect(page).to_have_url(re.compile(r"/vms/[0-9a-f-]{36}$"))
    made["vm"] = page.url.rsplit("/", 1)[1]

    page.click("[data-testid=tab-nics]")
    table = page.locator("[data-testid=nic-table]")
    net0, net1 = table.locator("tr[data-nic='0']"), table.locator("tr[data-nic='1']")
    expect(net0.locator("[data-testid=nic-network]")).to_have_text("vlan100")
    expect(net0.locator("[data-testid=nic-mac]")).to_have_text(MAC)
    expect(net0.locator("[data-testid=nic-address]")).to_have_text("10.100.0.15")
    expect(net0.locator("[data-testid=nic-link]")).to_have_attribute("data-link", "true")
    expect(net1.locator("[data-testid=nic-network]")).to_have_text("overlay")
    expect(net1.locator("[data-testid=nic-mac]")).to_have_text(MAC)
    expect(net1.locator("[data-testid=nic-address]")).to_have_text("—")
    assert (
        net0.locator("[data-testid=nic-mac]").inner_text()
        != net1.locator("[data-testid=nic-mac]").inner_text()
    )
    in_russian(page, "the VM's NICs")
    shot(page, screenshots, "vm-nics")


def test_change_the_nics_of_the_vm(page: Page, api: Api, made: dict[str, Any]) -> None:
    table = page.locator("[data-testid=nic-table]")
    net0, net1 = table.locator("tr[data-nic='0']"), table.locator("tr[data-nic='1']")
    # Its cable pulled (the VM is off: the guest finds it so at its start).
    with page.expect_request(lambda r: r.method == "PATCH" and "/nics/1" in r.url) as sent:
        net1.locator("[data-testid=nic-cable]").click()
    assert sent.value.post_data_json == {"link_up": False}
    expect(net1.locator("[data-testid=nic-link]")).to_have_attribute("data-link", "false")
    expect(net1.locator("[data-testid=nic-cable]")).to_have_text("Plug the cable in")

    # Another address for the first.
    net0.locator("[data-testid=nic-edit]").click()
    form = net0.locator("[data-testid=nic-edit-form]")
    expect(form.locator("[data-testid=nic-edit-address]")).to_have_value("10.100.0.15")
    form.locator("[data-testid=nic-edit-address]").fill("10.100.0.16")
    form.locator("[data-testid=nic-save]").click()
    expect(net0.locator("[data-testid=nic-address]")).to_have_text("10.100.0.16")

    # A third, its address from the subnet's range; then taken away again.
    attach = page.locator("[data-testid=nic-attach-form]")
    attach.locator("[data-testid=nic-attach-network]").select_option("vlan100")
    expect(attach.locator("[data-testid=nic-attach-address]")).to_be_visible()
    attach.locator("[data-testid=nic-attach]").click()
    net2 = table.locator("tr[data-nic='2']")
    expect(net2.locator("[data-testid=nic-address]")).to_have_text(
        re.compile(r"^10\.100\.0\.(1[0-9]|20)$")
    )
    expect(net2.locator("[data-testid=nic-mac]")).to_have_text(MAC)
    nics = api.vm(made["vm"])["spec"]["nics"]
    assert [n["address"] for n in nics][:2] == ["10.100.0.16", None], nics
    net2.locator("[data-testid=nic-detach]").click()
    confirm(page, "net2", "vlan100")
    expect(table.locator("tr[data-nic]")).to_have_count(2)


def test_a_network_in_use_is_not_deleted(page: Page, ui: str) -> None:
    page.goto(f"{ui}/networks")
    page.locator("tr[data-network=vlan100] [data-testid=network-delete]").click()
    confirm(page, "vlan100")
    error = page.locator("[data-testid=error]")
    expect(error).to_contain_text("409")
    expect(error).to_contain_text("still has NICs of VMs: netvm")
    expect(page.locator("tr[data-network=vlan100]")).to_have_count(1)
    # A switch with networks is refused too, and says which.
    page.locator("tr[data-switch=lan] [data-testid=switch-delete]").click()
    confirm(page, "lan")
    expect(error).to_contain_text("still has networks")


# The element that reaches furthest right, to say what makes a page too wide.
WIDEST = """() => {
  let found = null, right = 0;
  for (const el of document.querySelectorAll("body *")) {
    const r = el.getBoundingClientRect().right;
    if (r > right) { right = r; found = el; }
  }
  return found ? `${found.tagName.toLowerCase()}.${found.className} (${Math.round(right)} px)` : "";
}"""


def fits_375(page: Page, where: str) -> None:
    """assert_fits, and no wider than the phone: a mobile page wider than its screen is
    zoomed out, and then its inner width grows with it."""
    assert_fits(page, where)
    wide = page.evaluate("document.documentElement.scrollWidth")
    widest = page.evaluate(WIDEST)
    assert wide <= 375, f"{where} is {wide} px wide at 375 px: {widest}"


def test_at_phone_width_in_russian(
    phone: Page, ui: str, admin_password: str, made: dict[str, Any], screenshots: Path
) -> None:
    log_in(phone, ui, admin_password)
    for path in ("/networks", f"/vms/{made['vm']}?tab=nics"):
        phone.goto(f"{ui}{path}")
        settle(phone)
        fits_375(phone, path)
        assert_translated(phone, "ru", f"{path} at 375 px")
        shot(phone, screenshots, f"phone-{path.strip('/').split('/')[0]}")
    phone.goto(f"{ui}/vms/new")
    phone.fill("[data-testid=create-name]", "x")
    phone.click("[data-testid=create-next]")
    phone.click("[data-testid=create-next]")
    phone.locator("[data-nic='0'] [data-testid=nic-network]").select_option("vlan100")
    expect(phone.locator("[data-nic='0'] [data-testid=nic-address]")).to_be_visible()
    fits_375(phone, "the wizard's network step")
    shot(phone, screenshots, "phone-create-nics")
    assert_translated(phone, "ru", "the wizard's network step at 375 px")


def test_delete_the_network_once_no_vm_uses_it(page: Page, api: Api, made: dict[str, Any]) -> None:
    api.wait_task(api.ok("DELETE", f"/vms/{made['vm']}")["task"])
    page.reload()
    page.locator("tr[data-network=vlan100] [data-testid=network-delete]").click()
    confirm(page, "vlan100")
    expect(page.locator("tr[data-network=vlan100]")).to_have_count(0)
    page.locator("tr[data-network=overlay] [data-testid=network-delete]").click()
    confirm(page, "overlay")
    page.locator("tr[data-switch=lan] [data-testid=switch-delete]").click()
    confirm(page, "lan")
    expect(page.locator("[data-testid=switch-table]")).to_contain_text("No switches yet")
    expect(page.locator("[data-testid=network-table]")).to_contain_text("No networks yet")
